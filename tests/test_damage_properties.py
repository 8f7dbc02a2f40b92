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

import numpy as np
import pytest
from damage import damaged_copy, damages, files_of
from hypothesis import given
from hypothesis import strategies as st
from test_classify import assert_same, make_inputs
from test_classify_integrity import OPTIONS, tree

from tipretrieval.cache.cache import Cache
from tipretrieval.cache.files import LOCK_NAME, META
from tipretrieval.errors import TipError
from tipretrieval.jobs.classify import JOURNAL, classify_store, read_output
from tipretrieval.jobs.classify.journal import LOCK
from tipretrieval.store.store import Store


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


# --- caches ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_copy(inputs, tmp_path_factory) -> Path:
    """The job's cache at generation 2 (one shot removed): keys in two files, text, index."""
    cache = Cache.load(inputs[0])
    cache.remove_shots(cache.row_ids[:1])
    return cache.save(tmp_path_factory.mktemp("cache") / "cache")


@pytest.fixture(scope="module")
def queries(inputs) -> np.ndarray:
    return Store.open(inputs[1]).select(split="query").features[:40]


@given(data=st.data())
def test_cache_damage_when_loaded(cache_copy, queries, data):
    original = Cache.load(cache_copy)
    files = files_of(cache_copy, skip=(LOCK_NAME,))
    name, new = data.draw(damages(files, json_files=(META,)), label="damage")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache"
        damaged_copy(cache_copy, path, (name, new))
        before = tree(path)
        try:
            cache = Cache.load(path)
            for column in ("keys", "labels", "row_ids", "text"):
                assert np.array_equal(getattr(cache, column), getattr(original, column))
            logits = cache.logits(queries)
            assert np.isfinite(logits).all()
            if name != META:  # an edited cache.json may legitimately change alpha, beta ...
                assert cache.info == original.info
                assert np.array_equal(logits, original.logits(queries))
            try:  # loads and checks the index
                got = cache.logits(queries, mode="retrieval", k=4)
                assert np.isfinite(got).all()
            except TipError as exc:
                assert one_line(exc), exc
        except TipError as exc:
            assert one_line(exc), exc
        assert tree(path) == before
