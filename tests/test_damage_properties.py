"""Property tests: random damage to classify outputs (and caches) never passes silently.

Each example copies a finished output, damages one file (byte flip, truncation, deletion, an
edited JSON value or type) and checks: reading gives the original results or a one-line
TipError, and changes nothing; a rerun of the job restores the original bytes or refuses with
one line, changing nothing. Example counts come from the hypothesis profile (tests/conftest.py:
"ci" by default, HYPOTHESIS_PROFILE=nightly for many more).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from damage import damaged_copy, damages, files_of
from hypothesis import given
from hypothesis import strategies as st
from test_classify import assert_same, make_inputs
from test_classify_integrity import OPTIONS, tree

from tipretrieval.errors import TipError
from tipretrieval.jobs.classify import JOURNAL, classify_store, read_output
from tipretrieval.jobs.classify.journal import LOCK


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return make_inputs(tmp_path_factory.mktemp("damage"), queries_per_class=5)


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    (out / LOCK).unlink()
    return out


def one_line(exc: TipError) -> bool:
    return "\n" not in str(exc) and bool(str(exc))


@pytest.fixture(scope="module")
def finished_files(finished) -> dict[str, bytes]:
    return files_of(finished)


@pytest.fixture(scope="module")
def expected(finished):
    return read_output(finished)


@given(data=st.data())
def test_output_damage_when_read(finished, finished_files, expected, data):
    damage = data.draw(damages(finished_files, json_files=(JOURNAL,)), label="damage")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        damaged_copy(finished, out, damage)
        before = tree(out)
        try:
            assert_same(read_output(out), expected)
        except TipError as exc:
            assert one_line(exc), exc
        assert tree(out) == before


@given(data=st.data())
def test_output_damage_then_rerun(inputs, finished, finished_files, data):
    damage = data.draw(damages(finished_files, json_files=(JOURNAL,)), label="damage")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        damaged_copy(finished, out, damage)
        before = tree(out)
        try:
            classify_store(*inputs, out, OPTIONS, show_progress=False)
        except TipError as exc:
            assert one_line(exc), exc
            assert tree(out) == before
        else:
            assert tree(out) == tree(finished)
