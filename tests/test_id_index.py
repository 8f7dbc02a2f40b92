"""The id index as sorted runs (manifest format 3): an append writes a small run file, lookups
search every run, `compact` merges them, format 2 stores (one index file) open and append, a
damaged run is reported by `verify` and rebuilt from the shards, and a kill leaves the last
committed state."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tests.test_store_integrity import (
    CLASSES,
    DIM,
    PROV,
    make_rows,
    older_store,
    one_line,
)
from tipretrieval.errors import BadInput, CorruptData
from tipretrieval.store import id_index
from tipretrieval.store.manifest import FORMAT, FORMAT_VERSION
from tipretrieval.store.shard import IdKeys
from tipretrieval.store.store import Store


def runs(store: Store) -> list[int]:
    """Rows of each id index run the store's manifest names (from the file on disk)."""
    out = []
    for info in Store.open(store.path).manifest.id_runs:
        size = (store.path / info.name).stat().st_size
        assert size == info.rows * id_index.ENTRY.itemsize
        out.append(info.rows)
    return out


def index_files(store: Store) -> list[str]:
    return sorted(p.name for p in store.path.glob("ids-*.idx"))


def entries(store: Store) -> np.ndarray:
    """Every (hash, row) entry of the store's runs, from the files."""
    parts = [np.fromfile(store.path / r.name, dtype=id_index.ENTRY)
             for r in Store.open(store.path).manifest.id_runs]
    both = np.concatenate(parts)
    return np.sort(both, order=("hash", "row"))


def expected_entries(store: Store) -> np.ndarray:
    """The entries recomputed from the ids stored in the shards."""
    rows = Store.open(store.path).select(columns=("ids", "features", "row_ids"))
    want = np.empty(len(rows.ids), dtype=id_index.ENTRY)
    want["hash"], want["row"] = IdKeys.of(rows.ids, store.manifest.id_hash).hashes, rows.row_ids
    return np.sort(want, order=("hash", "row"))


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)


def test_equal_appends_merge_like_a_binary_counter_and_a_small_append_writes_a_small_run(store):
    sizes = []
    for k in range(7):
        store.append(make_rows(100, k))
        sizes.append(runs(store))
    assert sizes == [[100], [200], [200, 100], [400], [400, 100], [400, 200], [400, 200, 100]]
    assert len(index_files(store)) == 3  # merged runs were removed
    store.append(make_rows(3, 99))
    assert runs(store) == [400, 200, 100, 3]
    assert (store.path / store.manifest.id_runs[-1].name).stat().st_size == 3 * 16
    np.testing.assert_array_equal(entries(store), expected_entries(store))


def test_an_append_merges_runs_only_up_to_the_cap_and_compact_merges_all(store, monkeypatch):
    monkeypatch.setattr(id_index, "MAX_MERGED_ROWS", 250)
    sizes = []
    for k in range(6):
        store.append(make_rows(100, k))
        sizes.append(runs(store))
    assert sizes == [[100], [200], [200, 100], [200, 200], [200, 200, 100], [200, 200, 200]]
    store.compact()
    assert runs(store) == [600]
    np.testing.assert_array_equal(entries(store), expected_entries(store))


def test_a_writer_reads_each_run_once(store, monkeypatch):
    """A store object keeps the runs it wrote or read and checked (run files never change)."""
    for k in range(3):
        store.append(make_rows(100, k))
    reads = []
    real = id_index._read
    monkeypatch.setattr(id_index, "_read", lambda *a: reads.append(a[1].name) or real(*a))
    for k in range(3, 6):
        store.append(make_rows(100, k))
    assert reads == []
    fresh = Store.open(store.path)
    fresh.append(make_rows(5, 9))
    assert sorted(reads) == sorted(r.name for r in store.manifest.id_runs)


def test_duplicates_are_found_in_every_run(store):
    for k in range(5):
        store.append(make_rows(50 + 10 * k, k))
    assert len(store.manifest.id_runs) > 1
    for k in range(5):
        with pytest.raises(BadInput, match="already exist"):
            store.append(make_rows(3, k))
    got = Store.open(store.path).existing_ids(["r0-1", "r2-59", "r4-89", "r4-90", "nope"])
    assert got.tolist() == [True, True, True, False, False]
    assert len(store) == sum(50 + 10 * k for k in range(5))


def test_compact_merges_the_runs_into_one(store):
    for k in range(5):
        store.append(make_rows(40, k))
    assert runs(store) == [160, 40]
    result = store.compact()
    assert runs(store) == [200] and len(index_files(store)) == 1
    assert result.generation == 6
    np.testing.assert_array_equal(entries(store), expected_entries(store))
    with pytest.raises(BadInput, match="already exist"):
        Store.open(store.path).append(make_rows(1, 4))
    again = store.compact()  # nothing left to merge: no new generation
    assert again.generation == 6 and Store.open(store.path).generation == 6


def test_a_format2_store_opens_and_appends_keeping_its_index_file(tmp_path, monkeypatch):
    store = old = older_store(tmp_path, monkeypatch, 300, 2)
    assert old.manifest.format_version == 2 and runs(old) == [300]
    (name,) = index_files(old)
    before = (old.path / name).read_bytes()
    assert old.existing_ids(["r1-5", "r2-5"]).tolist() == [True, False]
    with pytest.raises(BadInput, match="already exist"):
        old.append(make_rows(5, 1))
    old.append(make_rows(20, 2))
    new = Store.open(store.path)
    assert new.manifest.format_version == FORMAT_VERSION and runs(new) == [300, 20]
    assert (new.path / name).read_bytes() == before  # the old file is the first run, unwritten
    np.testing.assert_array_equal(entries(new), expected_entries(new))
    assert json.loads((store.path / "manifest.json").read_text())["id_runs"][0]["name"] == name


def test_a_damaged_run_fails_verify_in_one_line_and_is_rebuilt_from_the_shards(store, caplog):
    for k in range(3):
        store.append(make_rows(100, k))
    bad = store.path / store.manifest.id_runs[0].name
    data = bytearray(bad.read_bytes())
    data[17] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match=f"id index run {bad.name} .* fails its sha256") as exc:
        Store.open(store.path).verify()
    assert "tipretrieval compact" in one_line(exc)
    reopened = Store.open(store.path)
    with caplog.at_level(logging.WARNING), pytest.raises(BadInput, match="already exist"):
        reopened.append(make_rows(2, 0))  # not trusted: rebuilt from the shards' ids
    assert "rebuilding the index from the shards" in caplog.text
    reopened.append(make_rows(10, 5))  # the rebuilt index is written back as one run
    assert runs(reopened) == [310] and index_files(reopened) == [reopened.manifest.id_runs[0].name]
    Store.open(store.path).verify()
    np.testing.assert_array_equal(entries(store), expected_entries(store))


def test_compact_heals_a_missing_run(store):
    for k in range(3):
        store.append(make_rows(100, k))
    (store.path / store.manifest.id_runs[-1].name).unlink()
    with pytest.raises(CorruptData, match="is missing"):
        Store.open(store.path).verify()
    Store.open(store.path).compact()
    Store.open(store.path).verify()
    assert runs(store) == [300]


class Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing handles it."""


def test_a_kill_before_or_after_the_manifest_leaves_a_consistent_store(store, monkeypatch):
    for k in range(3):
        store.append(make_rows(100, k))
    files, manifest = index_files(store), (store.path / "manifest.json").read_bytes()

    def die(*args):
        raise Killed
    with monkeypatch.context() as m:  # killed after writing the run, before the manifest
        m.setattr("tipretrieval.store.manifest.Manifest.save", die)
        with pytest.raises(Killed):
            store.append(make_rows(100, 3))
    assert (store.path / "manifest.json").read_bytes() == manifest
    assert len(index_files(store)) == len(files) + 1  # the orphan run
    assert Store.open(store.path).existing_ids(["r3-0", "r2-0"]).tolist() == [False, True]
    with monkeypatch.context() as m:  # killed after the manifest, before removing merged runs
        m.setattr(Store, "_remove_replaced_runs", die)
        with pytest.raises(Killed):
            Store.open(store.path).append(make_rows(100, 3))  # the rerun: merges all runs
    assert runs(store) == [400] and len(index_files(store)) == 3  # two left behind
    Store.open(store.path).append(make_rows(1, 4))  # removes them as orphans
    assert runs(store) == [400, 1] and len(index_files(store)) == 2
    Store.open(store.path).verify()
    np.testing.assert_array_equal(entries(store), expected_entries(store))


def test_a_manifest_naming_a_path_as_a_run_is_refused(store):
    store.append(make_rows(10, 1))
    path = store.path / "manifest.json"
    obj = json.loads(path.read_text())
    obj["id_runs"][0]["name"] = "../../etc/passwd"
    del obj["checksum"], obj["format_version"]
    path.write_text(FORMAT.dump(FORMAT.stamp(obj)))
    with pytest.raises(CorruptData, match="not id index file names"):
        Store.open(store.path)
