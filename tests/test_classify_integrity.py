"""Classify outputs are never trusted unchecked: part and journal checksums, a rerun that
rewrites damaged parts, mistyped splits, one job per directory, one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_classify import assert_same, make_inputs

from tipretrieval.cli import main
from tipretrieval.errors import CorruptData, TipError
from tipretrieval.jobs.classify import JOURNAL, SUCCESS, ClassifyOptions, classify_store
from tipretrieval.jobs.classify import read_output as read
from tipretrieval.jobs.classify.journal import LOCK, LOCK_WAIT_S

OPTIONS = ClassifyOptions(batch_size=32, split="query")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (the job lock excepted) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOCK}


def cli(*args, code: int) -> str:
    """Run the CLI in-process; assert the exit code and, on failure, one error line (after any
    progress bar) and no traceback; return that line (stderr on success)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    if not code:
        return result.stderr
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert sum("error" in line.lower() for line in lines) == 1, result.stderr
    return lines[-1]


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make the directory `path` unwritable, also for root (chattr +i); skip where impossible."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("root without chattr +i: cannot make a directory unwritable")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return make_inputs(tmp_path_factory.mktemp("integrity"), queries_per_class=5)


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory) -> Path:
    """A finished parquet job of 100 query rows in 4 parts (never modified: copy it)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    assert len(list(out.glob("part-*"))) == 4
    return out


def test_journal_records_each_part_sha256(finished):
    import hashlib

    parts = json.loads((finished / JOURNAL).read_text())["parts"]
    assert [p["sha256"] for p in parts] == [
        hashlib.sha256((finished / p["file"]).read_bytes()).hexdigest() for p in parts]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_part_is_refused_then_rewritten_by_a_rerun(inputs, finished, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before, part = tree(out), sorted(out.glob("part-*"))[1]
    if damage == "flip":
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0x01
        part.write_bytes(bytes(data))
    elif damage == "truncate":
        part.write_bytes(part.read_bytes()[:-7])
    else:
        part.unlink()
    damaged = tree(out)
    with pytest.raises(CorruptData, match=f"{part.name} is (damaged|missing)"):
        read(out)
    assert tree(out) == damaged  # reading changes nothing
    journal = classify_store(*inputs, out, OPTIONS, show_progress=False)
    assert journal.complete and tree(out) == before  # byte-identical to the finished job
    assert_same(read(out), read(finished))


def test_rerun_of_a_damaged_finished_job_via_cli_says_rows_rewritten(inputs, finished,
                                                                      tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    part = sorted(out.glob("part-*"))[0]
    part.unlink()
    result = CliRunner().invoke(main, ["classify", str(inputs[0]), "--store", str(inputs[1]),
                                       "--split", "query", "--batch-size", "32", "--quiet",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{part.name} is missing: classifying its rows again" in caplog.text
    assert "100 rows classified" in result.stdout
    assert tree(out) == tree(finished)


@pytest.mark.parametrize("edit", [
    lambda j: j["parts"][1].update(index=7),
    lambda j: j["parts"][0].update(sha256="0" * 64),
    lambda j: j.update(state="running"),
    lambda j: j["spec"]["options"].update(top_k=3),
    lambda j: j.pop("checksum"),
])
def test_an_edited_journal_is_refused_and_nothing_changes(inputs, finished, tmp_path, edit):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    journal = json.loads((out / JOURNAL).read_text())
    edit(journal)
    (out / JOURNAL).write_text(json.dumps(journal))
    edited = tree(out)
    with pytest.raises(CorruptData, match="journal.json fails its checksum"):
        read(out)
    with pytest.raises(CorruptData, match="journal.json fails its checksum.*`overwrite=`"):
        classify_store(*inputs, out, OPTIONS, show_progress=False)
    assert tree(out) == edited
    classify_store(*inputs, out, OPTIONS, overwrite=True, show_progress=False)
    assert tree(out) == tree(finished)


def test_truncated_journal_is_one_line_corrupt_data(inputs, finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / JOURNAL).write_bytes((out / JOURNAL).read_bytes()[:100])
    with pytest.raises(CorruptData, match="journal.json is unreadable"):
        read(out)
    cli("classify", inputs[0], "--store", inputs[1], "--split", "query", "--batch-size", 32,
        "--out", out, code=2)


def test_a_mistyped_split_is_refused_naming_the_splits(inputs, tmp_path):
    err = cli("classify", inputs[0], "--store", inputs[1], "--split", "nosuch",
              "--out", tmp_path / "out", code=2)
    assert "no split 'nosuch'" in err and "query, test, train, val" in err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_one_line(inputs, tmp_path):
    (tmp_path / "f").write_text("mine")
    err = cli("classify", inputs[0], "--store", inputs[1], "--out", tmp_path / "f", code=2)
    assert "is a file" in err and (tmp_path / "f").read_text() == "mine"


def test_unwritable_out_is_one_line_exit_1(inputs, finished, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        err = cli("classify", inputs[0], "--store", inputs[1], "--split", "query",
                  "--out", parent / "out", code=1)
    assert "not permitted" in err or "denied" in err
    out = tmp_path / "out"  # a finished job whose damaged part cannot be rewritten
    shutil.copytree(finished, out)
    sorted(out.glob("part-*"))[1].unlink()
    with read_only(out):
        cli("classify", inputs[0], "--store", inputs[1], "--split", "query", "--batch-size", 32,
            "--out", out, code=1)


def test_a_second_job_into_one_directory_fails_with_one_line(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(  # another process holds the job lock, as a running job does
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         f"lock = FileLock({str(out / LOCK)!r}); lock.acquire(); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        err = cli("classify", inputs[0], "--store", inputs[1], "--split", "query",
                  "--out", out, code=1)
        assert time.monotonic() - start >= LOCK_WAIT_S
        assert "another classify job is writing to" in err
        assert [p.name for p in out.iterdir()] == [LOCK]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    classify_store(*inputs, out, OPTIONS, show_progress=False)  # free again once it ends
    assert (out / SUCCESS).exists()


def test_lock_is_not_held_after_a_failed_job(inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TipError):
        classify_store(*inputs, out, ClassifyOptions(split="nosuch"), show_progress=False)
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    with pytest.raises(TipError, match="other parameters"):
        classify_store(*inputs, out, ClassifyOptions(batch_size=64, split="query"),
                       show_progress=False)
    classify_store(*inputs, out, OPTIONS, show_progress=False)  # not locked by the failure
