"""Resume computes only the parts the journal lacks; a grown store redoes the part it cut short."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tipretrieval.cache.cache import Cache
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.errors import BadInput
from tipretrieval.jobs.classify import (
    JOURNAL,
    SUCCESS,
    ClassifyOptions,
    Journal,
    classify_store,
    local,
    read_output,
)
from tipretrieval.rows import Rows
from tipretrieval.store.store import Store

OPTIONS = ClassifyOptions(batch_size=32, split="query", logits=True)


@pytest.fixture()
def inputs(tmp_path) -> tuple[Path, Path]:
    """A store of 240 rows (100 query rows, ids 140..239: the last part is cut short at 240)
    and a 3-shot cache."""
    data = make_dataset(20, 32, seed=5)
    store = write_store(tmp_path / "store", data, SplitSizes(train=4, val=1, test=2, query=5,
                                                             views=0))
    assert store.manifest.next_row_id == 240
    cache = Cache.build(store, 3, text=data.text)
    cache.set_params(2.0, 4.0)
    cache.save(tmp_path / "cache")
    return tmp_path / "cache", tmp_path / "store"


@pytest.fixture()
def computed(monkeypatch) -> list[tuple[int, int]]:
    """(first, last) row id of every batch the local engine classifies, in order."""
    calls: list[tuple[int, int]] = []
    real = local.classify_rows

    def spy(cache, rows, options, *rest):
        calls.append((int(rows.row_ids[0]), int(rows.row_ids[-1])))
        return real(cache, rows, options, *rest)

    monkeypatch.setattr(local, "classify_rows", spy)
    return calls


def kill_after(out: Path, lost: list[int]) -> None:
    """Make `out` look like a run killed after committing every part but `lost` (their files
    may or may not have been renamed into place before the kill)."""
    journal = Journal.load(out)
    journal.parts = {i: p for i, p in journal.parts.items() if i not in lost}
    journal.complete = False
    journal.save(out)
    (out / SUCCESS).unlink()


def stamps(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*")}


def part_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


def test_resume_computes_only_the_parts_missing_from_the_journal(inputs, computed, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    assert computed == [(140, 159), (160, 191), (192, 223), (224, 239)]
    expected, before = part_bytes(out), stamps(out)
    kill_after(out, lost=[5, 7])
    (out / "part-000007.parquet").unlink()  # killed before its rename; part 5 after it
    (out / ".part-000007.parquet.x1y2.tmp").write_bytes(b"half a part")  # its temp file
    computed.clear()
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    assert computed == [(160, 191), (224, 239)]
    after = stamps(out)
    assert {n: after[n] for n in before if n not in ("part-000005.parquet",
                                                     "part-000007.parquet")} == \
        {n: s for n, s in before.items() if n not in ("part-000005.parquet",
                                                      "part-000007.parquet")}
    assert after["part-000005.parquet"] != before["part-000005.parquet"]
    assert part_bytes(out) == expected
    assert not list(out.glob(".*.tmp"))
    computed.clear()
    classify_store(*inputs, out, OPTIONS, show_progress=False)  # complete: nothing to do
    assert computed == [] and stamps(out) == after


def test_a_new_cache_generation_keeps_the_last_part_when_the_store_did_not_grow(
        inputs, computed, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    kill_after(out, lost=[5])
    Cache.load(inputs[0]).save()  # the cache moves on; the store is unchanged
    computed.clear()
    classify_store(*inputs, out, OPTIONS, accept_new_generation=True, show_progress=False)
    assert computed == [(160, 191)]
    assert len(read_output(out)) == 100


def test_a_store_grown_after_a_kill_redoes_the_part_cut_short_by_its_old_end(
        inputs, computed, tmp_path):
    cache_path, store_path = inputs
    out = tmp_path / "out"
    classify_store(cache_path, store_path, out, OPTIONS, show_progress=False)
    kill_after(out, lost=[5])
    rng = np.random.default_rng(0)
    late = rng.standard_normal((30, 32)).astype(np.float32)
    late /= np.linalg.norm(late, axis=1, keepdims=True)
    store = Store.open(store_path)
    new_ids = store.append(Rows.make([f"late/{i}" for i in range(30)], late, splits="query"))
    assert new_ids.tolist() == list(range(240, 270))
    with pytest.raises(BadInput, match="store_generation"):
        classify_store(cache_path, store_path, out, OPTIONS, show_progress=False)
    computed.clear()
    classify_store(cache_path, store_path, out, OPTIONS, accept_new_generation=True,
                   show_progress=False)
    # part 5 was lost; part 7 ([224, 256)) ended at the old store end 240 and gains 240..255
    assert computed == [(160, 191), (224, 255), (256, 269)]
    got = read_output(out)
    queries = Store.open(store_path).select(split="query")
    assert list(got.ids) == list(queries.ids) and len(set(got.ids)) == 130
    assert np.array_equal(got.row_ids, queries.row_ids)
    fresh = tmp_path / "fresh"
    classify_store(cache_path, store_path, fresh, OPTIONS, show_progress=False)
    assert part_bytes(out) == part_bytes(fresh)


def test_a_damaged_part_of_an_unfinished_job_is_redone(inputs, computed, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    expected = part_bytes(out)
    kill_after(out, lost=[7])
    damaged = out / "part-000005.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-9] + b"\0" * 9)  # committed, then corrupted
    computed.clear()
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    assert computed == [(160, 191), (224, 239)]
    assert part_bytes(out) == expected and (out / SUCCESS).exists()


def test_out_may_be_a_new_nested_directory_and_records_the_spec_hash(inputs, tmp_path):
    out = tmp_path / "a" / "b" / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    journal = json.loads((out / JOURNAL).read_text())
    spec = hashlib.sha256(json.dumps(journal["spec"], sort_keys=True).encode()).hexdigest()
    assert journal["spec_hash"] == spec
    assert (out / SUCCESS).read_text() == spec + "\n"


def test_overwrite_restarts_an_unfinished_job(inputs, computed, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    kill_after(out, lost=[6, 7])
    computed.clear()
    classify_store(*inputs, out, OPTIONS, overwrite=True, show_progress=False)
    assert len(computed) == 4 and len(read_output(out)) == 100


def as_version_1(out: Path) -> None:
    """Rewrite `out`'s journal as a version 1 tipretrieval wrote it: no checksums at all."""
    journal = json.loads((out / JOURNAL).read_text())
    del journal["checksum"]
    journal["format_version"] = 1
    journal["parts"] = [{k: v for k, v in p.items() if k != "sha256"} for p in journal["parts"]]
    (out / JOURNAL).write_text(json.dumps(journal))


def test_a_version_1_journal_resumes_its_unfinished_job(inputs, computed, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    expected = part_bytes(out)
    kill_after(out, lost=[7])
    as_version_1(out)
    (out / "part-000005.parquet").unlink()  # a committed part whose file is gone
    computed.clear()
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    assert computed == [(160, 191), (224, 239)]  # unchecked parts are kept, missing ones redone
    assert part_bytes(out) == expected and (out / SUCCESS).exists()
    journal = json.loads((out / JOURNAL).read_text())
    assert journal["format_version"] == 2
    redone = {p["file"]: p["sha256"] for p in journal["parts"] if p["index"] in (5, 7)}
    assert redone == {f: hashlib.sha256(expected[f]).hexdigest()
                      for f in ("part-000005.parquet", "part-000007.parquet")}


def test_the_journal_says_running_and_where_the_cache_is_and_a_resume_keeps_the_lock(
        inputs, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    kill_after(out, lost=[7])
    where = str(inputs[0].resolve())
    doc = json.loads((out / JOURNAL).read_text())
    assert (doc["state"], doc["cache_path"]) == ("running", where)
    assert Journal.load(out).cache_path == where
    lock = out / ".classify.lock"
    inode = lock.stat().st_ino
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    assert lock.stat().st_ino == inode  # the held lock is not swept away with temp files
    assert json.loads((out / JOURNAL).read_text())["state"] == "complete"


def test_a_resume_from_a_moved_cache_records_where_the_cache_is_now(inputs, computed, tmp_path):
    """`cache_path` says where the cache was last read (a report finds it there): a resume,
    and a rerun of the finished job, from a moved cache directory record the new path."""
    out = tmp_path / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    expected = part_bytes(out)
    kill_after(out, lost=[7])
    moved = tmp_path / "elsewhere" / "cache"
    moved.parent.mkdir()
    shutil.move(inputs[0], moved)
    computed.clear()
    classify_store(moved, inputs[1], out, OPTIONS, show_progress=False)
    assert computed == [(224, 239)] and part_bytes(out) == expected
    doc = json.loads((out / JOURNAL).read_text())
    assert (doc["state"], doc["cache_path"]) == ("complete", str(moved.resolve()))
    again = tmp_path / "again"
    shutil.move(moved, again)
    classify_store(again, inputs[1], out, OPTIONS, show_progress=False)
    assert Journal.load(out).cache_path == str(again.resolve())
