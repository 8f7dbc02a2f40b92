"""Integrity on every read: checksummed shards, checked values, checked manifests, format 1
stores still read, long ids, and an id index that keeps appends from opening every shard."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import xxhash
from random_rows import random_rows

from tipretrieval.errors import BadInput, CorruptData
from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store import id_hash
from tipretrieval.store import manifest as manifest_mod
from tipretrieval.store import shard as shard_mod
from tipretrieval.store.manifest import FORMAT, FORMAT_VERSION, IdIndexInfo, Manifest, ShardInfo
from tipretrieval.store.store import Store
from tipretrieval.util.checksum import file_sha256
from tipretrieval.util.jsonfile import content_sha256

DIM = 16
CLASSES = ["ant", "bee", "cat", "dog"]
PROV = Provenance("ViT-B-32", "openai", DIM)


def make_rows(n: int, seed: int, views: int = 0, sources: bool = False) -> Rows:
    return random_rows(n, seed, dim=DIM, classes=len(CLASSES), prefix="r", views=views,
                       sources=sources)


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)
    store.append(make_rows(3000, 1, views=2, sources=True))
    store.append(make_rows(500, 2))
    return store


def shard_path(store: Store, i: int) -> Path:
    return store.path / "shards" / store.manifest.shards[i].name


def flip_in(path: Path, dataset: str, where: float = 0.5) -> None:
    """Flip one bit inside the first stored chunk of `dataset` (the file keeps its size)."""
    with h5py.File(path, "r") as f:
        chunk = f[dataset].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + int(chunk.size * where)] ^= 0x10
    path.write_bytes(bytes(data))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("dataset", ["features", "labels", "ids_utf8", "splits", "views",
                                     "sources_end", "features_xxh3"])
def test_a_flipped_bit_in_any_column_is_corrupt_data_on_read(store, dataset):
    path = shard_path(store, 0)
    flip_in(path, dataset)
    with pytest.raises(CorruptData) as exc:
        store.select(with_views=True)
    text = one_line(exc)
    assert f"shard {path.name} cannot be read" in text and "`Store.verify()`" in text
    assert "Fletcher32" in text or "checksum" in text.lower()
    if dataset not in ("views", "features_xxh3"):  # read_range reads neither
        with pytest.raises(CorruptData, match=path.name):
            store.read_range(0, 3500)
    assert len(store.select(split="val", row_ids=np.arange(3000, 3500))) > 0  # other shard


def _rewrite(path: Path, dataset: str, index, value) -> None:
    """Change stored values through HDF5 (so its checksums stay valid, and the features'
    chunk hashes are made again): a bad writer."""
    with h5py.File(path, "r+") as f:
        f[dataset][index] = value
        if dataset == "features":
            column = shard_mod._Column("features", f["features"][()], f["features"].chunks)
            f["features_xxh3"][:] = shard_mod.chunk_hashes(column)


def test_non_finite_features_and_bad_labels_are_refused_on_every_read_path(store):
    path = shard_path(store, 1)
    _rewrite(path, "features", (7, 3), np.inf)
    message = f"shard {path.name} holds NaN or inf features \\(row id 3007\\)"
    with pytest.raises(CorruptData, match=message):
        store.select()
    with pytest.raises(CorruptData, match=message):
        list(store.iter_rows(100, features_dtype=None, columns=("features",)))
    with pytest.raises(CorruptData, match=message):
        store.read_range(3000, 3100, split=None)
    with pytest.raises(CorruptData, match=message):
        store.select(row_ids=[3001, 3007])
    assert len(store.select(row_ids=[3001, 3006])) == 2  # masked reads check only kept rows
    _rewrite(path, "features", (7, 3), 0.0)
    _rewrite(path, "labels", 9, 4)
    with pytest.raises(CorruptData, match=f"{path.name} holds labels outside -1..3"):
        store.select(split="val")
    _rewrite(path, "labels", 9, -1)
    _rewrite(shard_path(store, 0), "views", (5, 1, 0), np.nan)
    store.select()  # views are only checked when they are read
    with pytest.raises(CorruptData, match="NaN or inf features \\(row id 5\\)"):
        store.select(with_views=True)


def test_a_batch_checked_while_the_next_is_read_fails_before_it_and_before_the_next(store):
    """Features read as stored are checked in a thread while the next batch is read: a batch
    with an inf is still refused before it is yielded, and before the damaged chunk that the
    next batch reads; the batches before it come whole."""
    _rewrite(shard_path(store, 0), "features", (2950, 1), -np.inf)  # the batch of 2900-2999
    flip_in(shard_path(store, 1), "features")  # the next batch reads it
    fast = {"columns": ("features", "row_ids"), "features_dtype": None, "workers": 0}
    got = []
    with pytest.raises(CorruptData, match="NaN or inf features \\(row id 2950\\)"):
        for rows in store.iter_rows(100, **fast):
            got.append(rows.row_ids.copy())
    assert np.array_equal(np.concatenate(got), np.arange(2900))
    _rewrite(shard_path(store, 0), "features", (2950, 1), 0.5)
    with pytest.raises(CorruptData, match=f"{shard_path(store, 1).name} cannot be read"):
        list(store.iter_rows(100, **fast))


@pytest.mark.parametrize("hashes", [True, False], ids=["chunk-hashes", "written-before-them"])
def test_a_zeroed_chunk_passes_fletcher32_but_not_the_read_checks(store, hashes):
    path = shard_path(store, 1)
    with h5py.File(path, "r+") as f:
        chunk = f["features"].id.get_chunk_info(0)
        if not hashes:
            del f["features_xxh3"]  # (the features' chunks stay where they are)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset:chunk.byte_offset + chunk.size] = bytes(chunk.size)
    path.write_bytes(bytes(data))
    store = Store.open(store.path)
    message = "fails its xxh3_64 checksum" if hashes else "holds all-zero feature vectors"
    with pytest.raises(CorruptData, match=f"{path.name} .*{message}"):
        store.select(split="val")
    with pytest.raises(CorruptData, match="all-zero feature vectors \\(row id 3000\\)"):
        store.read_range(2990, 3010)  # (read by HDF5, whose fletcher32 passes)


def test_a_zeroed_id_hash_table_or_id_index_never_admits_duplicates(store, caplog):
    path = shard_path(store, 0)
    with h5py.File(path, "r") as f:
        chunk = f["id_hash"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset:chunk.byte_offset + chunk.size] = bytes(chunk.size)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match=f"shard {path.name} has a damaged id hash table"):
        store.select(ids=["r1-5"])
    with pytest.raises(BadInput, match="already exist"):  # the id index still knows them
        store.append(make_rows(10, 1))
    index = store.path / store.manifest.id_runs[-1].name
    index.write_bytes(bytes(index.stat().st_size))
    store = Store.open(store.path)  # (a store object keeps the runs it read and checked)
    with caplog.at_level(logging.WARNING), pytest.raises(BadInput, match="already exist"):
        store.append(make_rows(10, 2))  # rebuilt from the shards' ids, not trusted
    assert "id index" in caplog.text and "damaged" in caplog.text
    store.append(make_rows(10, 3))
    assert len(Store.open(store.path)) == 3510


def _edit(store: Store, change, checksum: bool = True) -> None:
    """Edit the manifest by hand; with `checksum`, as a careful editor who also fixes it."""
    path = store.path / "manifest.json"
    obj = json.loads(path.read_text())
    change(obj)
    if checksum:
        obj["checksum"] = content_sha256(obj)
    path.write_text(json.dumps(obj))


EDITS = [
    ("rows", lambda m: m["shards"][1].update(rows=40), "has 40 rows but counts of 500"),
    ("overlap", lambda m: m["shards"][1].update(first_row_id=2500),
     "starts at row id 2500, not 3000"),
    ("dim", lambda m: m.update(dim=256), "dim 256 does not match"),
    ("classes", lambda m: m.update(classes=["ant", "ant", "cat", "dog"]), "repeated"),
    ("label", lambda m: m.update(classes=["ant"]), "labels outside -1..0"),
    ("name", lambda m: m["shards"][0].update(name="../../etc/passwd"), "not shard file names"),
    ("next", lambda m: m.update(next_row_id=10), "next row id 10"),
    ("types", lambda m: m["shards"][0].update(rows=[1]), "store manifest .* is invalid"),
]


@pytest.mark.parametrize("name, change, message", EDITS, ids=[e[0] for e in EDITS])
def test_inconsistent_manifests_are_one_line_corrupt_data(store, name, change, message):
    _edit(store, change)
    with pytest.raises(CorruptData, match=message) as exc:
        Store.open(store.path)
    one_line(exc)


def test_a_hand_edit_fails_the_manifest_checksum(store):
    _edit(store, lambda m: m.update(classes=["bee", "ant", "cat", "dog"]), checksum=False)
    with pytest.raises(CorruptData, match="fails its checksum"):
        Store.open(store.path)


def test_shard_shapes_are_checked_against_the_manifest_at_open(store):
    def shrink(m):  # a consistent manifest that disagrees with the shard file
        s = m["shards"][1]
        s.update(rows=400, counts={"val": {"-1": 400}})
        m["next_row_id"] = 3400
        m["id_runs"] = []
    _edit(store, shrink)
    reopened = Store.open(store.path)
    with pytest.raises(CorruptData, match=r"has features of shape \(500, 16\) but the manifest "
                                          r"says \(400, 16\)"):
        reopened.select(split="val")


def test_an_old_snapshot_gets_a_clear_error_when_its_shard_is_gone(store):
    old = Store.open(store.path)
    path = shard_path(store, 1)
    path.unlink()
    with pytest.raises(CorruptData, match=f"shard {path.name} is missing"):
        old.select()


def test_one_long_id_costs_its_own_bytes_only(tmp_path):
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)
    rows = make_rows(2000, 1)
    rows.ids[5] = "x" * 100_000 + "é"
    store.append(rows)
    assert shard_path(store, 0).stat().st_size < 1_000_000  # fixed width: 200 MB
    got = Store.open(store.path).select()
    np.testing.assert_array_equal(got.ids, rows.ids)
    assert Store.open(store.path).existing_ids([rows.ids[5], "x"]).tolist() == [True, False]


def hash_ids_as_before_format4(monkeypatch) -> None:
    """Stores created from now on hash their ids as stores before manifest format 4 (blake2b),
    so that an older format can be made of them by rewriting the manifest and shards."""
    monkeypatch.setattr(manifest_mod, "NEW_ID_HASH", id_hash.OLD)


def write_format1(store: Store, rows: Rows) -> None:
    """Replace the store's only shard and manifest with their format 1 equivalents: ids and
    sources fixed-width bytes, no checksums, no id index, no manifest checksum."""
    path = shard_path(store, 0)
    with h5py.File(path, "r") as f:
        keep = {k: f[k][()] for k in ("features", "labels", "id_hash", "id_order", "splits",
                                      "split_names")}
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=keep["features"], chunks=(1000, DIM))
        for k in ("labels", "id_hash", "id_order", "splits"):
            f[k] = keep[k]
        f.create_dataset("split_names", data=keep["split_names"], dtype=h5py.string_dtype())
        f.create_dataset("ids", data=np.array([s.encode() for s in rows.ids], dtype="S"),
                         chunks=(1000,))
    obj = before_format4(store, json.loads((store.path / "manifest.json").read_text()))
    obj["format_version"] = 1
    obj["shards"][0]["nbytes"] = path.stat().st_size
    del obj["checksum"], obj["id_runs"]
    (store.path / "manifest.json").write_text(json.dumps(obj))
    for p in store.path.glob("ids-*.idx"):
        p.unlink()


def test_format1_stores_are_read_and_appended_to(tmp_path, monkeypatch):
    hash_ids_as_before_format4(monkeypatch)
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)
    rows = make_rows(1500, 1)
    store.append(rows)
    write_format1(store, rows)
    old = Store.open(store.path)
    assert old.manifest.format_version == 1
    old.verify()
    got = old.select()
    np.testing.assert_array_equal(got.ids, rows.ids)
    np.testing.assert_array_equal(got.features, rows.features.astype(np.float16))
    assert old.existing_ids(["r1-7", "nope"]).tolist() == [True, False]
    with pytest.raises(BadInput, match="already exist"):
        old.append(make_rows(3, 1))
    old.append(make_rows(20, 2))
    new = Store.open(store.path)
    assert new.manifest.format_version == FORMAT_VERSION
    assert sum(r.rows for r in new.manifest.id_runs) == 1520
    np.testing.assert_array_equal(new.select().ids[1495:1505],
                                  list(rows.ids[1495:]) + [f"r2-{i}" for i in range(5)])


def before_format4(store: Store, obj: dict) -> dict:
    """The manifest `obj` as formats 1-3 recorded it: shard checksums as sha256, no id hash
    (blake2b_8 implied: the store must hash its ids so, `hash_ids_as_before_format4`)."""
    assert obj.pop("id_hash") == id_hash.OLD
    for shard in obj["shards"]:
        del shard["digest"]
        shard["sha256"] = file_sha256(store.path / "shards" / shard["name"])
    return obj


def older_store(tmp_path: Path, monkeypatch, rows: int, version: int) -> Store:
    """A store of `rows` rows (ids r1-*) as format `version` (2 or 3) wrote it: ids hashed by
    blake2b, shard checksums as sha256, and for format 2 one `id_index` file, no runs."""
    hash_ids_as_before_format4(monkeypatch)
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)
    store.append(make_rows(rows, 1))
    path = store.path / "manifest.json"
    obj = before_format4(store, json.loads(path.read_text()))
    del obj["checksum"], obj["format_version"]
    if version == 2:
        (obj["id_index"],) = obj.pop("id_runs")
    path.write_text(FORMAT.dump(FORMAT.stamp(obj, version)))
    return Store.open(store.path)


def test_a_format3_store_keeps_its_sha256_checksums_and_new_shards_get_xxh3(tmp_path, monkeypatch):
    store = old = older_store(tmp_path, monkeypatch, 30, 3)
    (first,) = old.manifest.shards
    assert old.manifest.format_version == 3 and first.algorithm == "sha256"
    old.verify()
    old.append(make_rows(20, 2))
    new = Store.open(store.path)
    assert new.manifest.format_version == FORMAT_VERSION and new.manifest.id_hash == id_hash.OLD
    with pytest.raises(BadInput, match="already exist"):  # found by the old hashes
        new.append(make_rows(3, 1))
    kept, added = new.manifest.shards
    assert kept.digest == "sha256:" + hashlib.sha256(shard_path(new, 0).read_bytes()).hexdigest()
    added_bytes = shard_path(new, 1).read_bytes()
    assert added.digest == "xxh3_128:" + xxhash.xxh3_128(added_bytes).hexdigest()
    new.verify()
    data = bytearray(shard_path(new, 0).read_bytes())
    data[len(data) // 2] ^= 0x01
    shard_path(new, 0).write_bytes(bytes(data))
    with pytest.raises(CorruptData, match=f"shard {kept.name} fails its sha256 checksum"):
        new.verify()


def test_a_format3_manifest_with_an_xxh3_checksum_is_refused(tmp_path):
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)
    store.append(make_rows(30, 1))
    path = store.path / "manifest.json"
    obj = json.loads(path.read_text())
    del obj["checksum"], obj["format_version"]
    path.write_text(FORMAT.dump(FORMAT.stamp(obj, 3)))
    with pytest.raises(CorruptData, match="checksum of unknown kind"):
        Store.open(store.path)


def test_a_manifest_naming_an_unknown_id_hash_is_refused(tmp_path):
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)
    path = store.path / "manifest.json"
    obj = json.loads(path.read_text())
    obj["id_hash"] = "md5"
    del obj["checksum"]
    path.write_text(FORMAT.dump(FORMAT.stamp(obj)))
    with pytest.raises(CorruptData, match="id hash 'md5' is not one of"):
        Store.open(store.path)


def test_format1_shards_without_an_id_hash_table_are_scanned(tmp_path, monkeypatch):
    """Shards written before the hash table existed (format 1) are found by reading their ids."""
    hash_ids_as_before_format4(monkeypatch)
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)
    rows = make_rows(1500, 1)
    store.append(rows)
    write_format1(store, rows)
    path = shard_path(store, 0)
    with h5py.File(path, "a") as f:
        del f["id_hash"], f["id_order"]
    obj = json.loads((store.path / "manifest.json").read_text())
    obj["shards"][0].update(sha256=file_sha256(path), nbytes=path.stat().st_size)
    (store.path / "manifest.json").write_text(json.dumps(obj))
    old = Store.open(store.path)
    old.verify()
    probe = [rows.ids[5], "nope", rows.ids[5], rows.ids[-1]]
    np.testing.assert_array_equal(old.existing_ids(probe), [True, False, True, True])
    np.testing.assert_array_equal(old.select(ids=probe).row_ids, [5, 1499])
    with pytest.raises(BadInput, match="already exist"):
        old.append(make_rows(3, 1))


def test_an_append_opens_only_the_shards_of_hash_hits(tmp_path, monkeypatch):
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES)
    for k in range(40):
        store.append(make_rows(5, k))
    opened: list[str] = []
    real = shard_mod.ShardReader.__init__

    def counting(self, shard_dir, info, dim=None):
        opened.append(info.name)
        real(self, shard_dir, info, dim)
    monkeypatch.setattr(shard_mod.ShardReader, "__init__", counting)
    store.append(make_rows(5, 100))
    assert opened == []
    with pytest.raises(BadInput, match="already exist"):
        store.append(make_rows(5, 17))
    assert opened == [store.manifest.shards[17].name]


def test_manifests_with_many_labels_and_float_provenance_reload(tmp_path):
    prov = Provenance("ViT-B-32", "openai", DIM, preprocess={"mean": [0.48, 0.45], "size": 224})
    classes = [f"c{i}" for i in range(30)]
    store = Store.create(tmp_path / "s", dim=DIM, provenance=prov, classes=classes)
    rows = make_rows(300, 1)
    rows.labels = np.arange(300) % 30 - 1  # labels 10 < 2 as strings: key order differs
    store.append(rows)
    assert Store.open(store.path).class_counts() == store.class_counts()


def test_a_format2_shard_without_its_id_hash_table_is_corrupt(tmp_path):
    """Only format-1 shards may lack the table (they are scanned); in format 2 it is damage."""
    from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store

    store = write_store(tmp_path / "s", make_dataset(num_classes=5, dim=32, seed=0),
                        SplitSizes(train=2, val=1, test=1, query=1))
    known = store.select().ids[0]
    shard = sorted((tmp_path / "s" / "shards").glob("*.h5"))[0]
    with h5py.File(shard, "a") as f:
        del f["id_hash"]
    with pytest.raises(CorruptData, match="id hash table"):
        Store.open(tmp_path / "s").select(ids=[known])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_every_inf_and_nan_pattern_is_refused_and_the_largest_finite_values_read(tmp_path,
                                                                                 dtype):
    """Both signs of inf, NaN with the lowest and highest payloads; +-max finite reads."""
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES, dtype=dtype)
    store.append(make_rows(300, 1))
    path = shard_path(store, 0)
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")
    inf, sign = (0x7C00, 0x8000) if dtype == "float16" else (0x7F800000, 0x80000000)

    def read_with(pattern: int) -> None:
        with h5py.File(path, "r") as f:
            x = f["features"][()]
        x.view(bits)[9, 2] = pattern
        _rewrite(path, "features", ..., x)  # through HDF5, so its checksums stay valid
        list(store.iter_rows(100, columns=("features",), features_dtype=None))
    for pattern in (inf - 1, sign | (inf - 1)):  # the largest finite values
        read_with(pattern)
    for pattern in (inf, sign | inf, inf + 1, sign | inf + 1, sign - 1, sign | sign - 1):
        with pytest.raises(CorruptData, match="NaN or inf features \\(row id 9\\)"):
            read_with(pattern)


def _shard(i: int, first: int, rows: int, **change) -> ShardInfo:
    """A consistent shard entry: `rows` rows from row id `first`, counted as labels -1 and 3."""
    info = ShardInfo(name=f"{first:012d}-{i:08x}.h5", rows=rows, first_row_id=first,
                     digest="xxh3_128:" + "0" * 32, nbytes=100,
                     counts={"train": {-1: 1, 3: rows - 1}})
    return replace(info, **change)


def _manifest(dim: int = DIM, shards=None, **change) -> Manifest:
    """Shards (default: row ids 0..4 and 5..11) over CLASSES, next row id and id index at the
    last shard's end, then `change`."""
    shards = (_shard(0, 0, 5), _shard(1, 5, 7)) if shards is None else shards
    end = shards[-1].end_row_id
    m = Manifest(store_id="s", generation=2, dim=dim, dtype="float16",
                 provenance=Provenance("ViT-B-32", "openai", dim), classes=tuple(CLASSES),
                 next_row_id=end, shards=shards, id_runs=(_run(2, end),))
    return replace(m, **change)


def _run(generation: int, rows: int) -> IdIndexInfo:
    """An id index run file entry of `rows` rows."""
    return IdIndexInfo(f"ids-{generation:012d}.idx", rows, "0" * 64)


# each boundary of the manifest's invariants, with the value just inside (None: accepted)
# and just outside (refused, with part of its message)
BOUNDARIES = [
    ("dim 1", _manifest(dim=1), None),
    ("dim 0", _manifest(dim=0), "dim 0 does not match"),
    ("nbytes 1", _manifest(shards=(_shard(0, 0, 5, nbytes=1),)), None),
    ("nbytes 0", _manifest(shards=(_shard(0, 0, 5, nbytes=0),)), "has 0 bytes and 0 views"),
    ("views 0", _manifest(shards=(_shard(0, 0, 5, views=0),)), None),
    ("views -1", _manifest(shards=(_shard(0, 0, 5, views=-1),)), "has 100 bytes and -1 views"),
    ("rows 1 = counts", _manifest(shards=(_shard(0, 0, 1, counts={"val": {2: 1}}),)), None),
    ("rows 0 = counts", _manifest(shards=(_shard(0, 0, 0, counts={}),)),
     "shard 000000000000-00000000.h5 has 0 rows but counts of 0"),
    ("rows < counts", _manifest(shards=(_shard(0, 0, 4, counts={"x": {1: 5}}), _shard(1, 4, 8))),
     "has 4 rows but counts of 5"),
    ("rows > counts", _manifest(shards=(_shard(0, 0, 6, counts={"x": {1: 5}}), _shard(1, 6, 6))),
     "has 6 rows but counts of 5"),
    ("first shard at 1", _manifest(shards=(_shard(0, 1, 5), _shard(1, 6, 6))),
     "starts at row id 1, not 0"),
    ("overlap by 1", _manifest(shards=(_shard(0, 0, 5), _shard(1, 4, 8))),
     "starts at row id 4, not 5"),
    ("gap of 1", _manifest(shards=(_shard(0, 0, 5), _shard(1, 6, 6))),
     "starts at row id 6, not 5"),
    ("label -1 and the last class", _manifest(
        shards=(_shard(0, 0, 5, counts={"a": {-1: 2, len(CLASSES) - 1: 3}}),)), None),
    ("label -2", _manifest(shards=(_shard(0, 0, 5, counts={"a": {-2: 5}}),)),
     "counts labels outside -1..3"),
    ("label = classes", _manifest(shards=(_shard(0, 0, 5, counts={"a": {len(CLASSES): 5}}),)),
     "counts labels outside -1..3"),
    ("next row id 11", _manifest(next_row_id=11), "next row id 11 is not the end of the last"),
    ("next row id 13", _manifest(next_row_id=13), "next row id 13 is not the end of the last"),
    ("no id index", _manifest(id_runs=()), None),
    ("id index run of 1 row", _manifest(id_runs=(_run(1, 1),)), None),
    ("id index run of 0 rows", _manifest(id_runs=(_run(1, 0),)),
     "id index run ids-000000000001.idx has 0 rows"),
    ("id index runs of 12 rows", _manifest(id_runs=(_run(1, 5), _run(2, 7))), None),
    ("id index runs of 13 rows", _manifest(id_runs=(_run(1, 6), _run(2, 7))),
     "the id index covers 13 rows of 12"),
    ("id index run named i", _manifest(id_runs=(IdIndexInfo("i", 12, "0" * 64),)),
     "not id index file names"),
    ("id index run named twice", _manifest(id_runs=(_run(1, 5), _run(1, 7))),
     "id index runs are repeated"),
]


@pytest.mark.parametrize("manifest, message", [b[1:] for b in BOUNDARIES],
                         ids=[b[0] for b in BOUNDARIES])
def test_each_manifest_invariant_refuses_one_past_its_boundary(manifest, message):
    assert _manifest().problem() is None
    if message is None:
        assert manifest.problem() is None
    else:
        assert message in manifest.problem()


def test_a_store_with_non_ascii_class_names_is_sealed_over_its_utf8_text(tmp_path):
    """The manifest's checksum is the sha256 of its canonical JSON with names as UTF-8 (not
    \\u escapes), computed here with hashlib; the store reopens and verifies."""
    classes = ["café", "chien_à_poil", "犬", "ant"]
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=classes)
    store.append(make_rows(20, 1))
    text = (store.path / "manifest.json").read_text(encoding="utf-8")
    assert "犬" in text and "\\u" not in text
    obj = json.loads(text)
    rest = {k: v for k, v in obj.items() if k != "checksum"}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert obj["checksum"] == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    reopened = Store.open(store.path)
    assert reopened.classes == classes and len(reopened) == 20
    reopened.verify()


def test_each_features_chunk_hash_is_the_xxh3_of_the_chunk_as_hdf5_stores_it(store):
    """Checked against HDF5's own stored chunk bytes (the last chunk padded by HDF5)."""
    for i, rows in ((0, 3000), (1, 500)):
        with h5py.File(shard_path(store, i), "r") as f:
            ds, hashes = f["features"], f["features_xxh3"][()]
            assert ds.fletcher32 and ds.shape[0] == rows
            stored = [ds.id.read_direct_chunk((c, 0))[1] for c in range(0, rows, ds.chunks[0])]
        assert len(stored) == len(hashes) > 0
        assert hashes.tolist() == [xxhash.xxh3_64_intdigest(b[:-4]) for b in stored]


@pytest.mark.parametrize("batch", [1, 7, 100, 1024, 4096])
def test_features_read_from_hashed_chunks_equal_hdf5s_read_at_any_batch_size(store, batch):
    want = []
    for i in range(2):
        with h5py.File(shard_path(store, i), "r") as f:
            want.append(f["features"][()])
    want = np.concatenate(want)
    for options in ({"columns": ("features", "row_ids"), "features_dtype": None}, {}):
        got = np.concatenate([r.features for r in store.iter_rows(batch, **options)])
        assert np.array_equal(got, want.astype(got.dtype))
    part = store.select(row_ids=np.arange(2990, 3010))  # across the two shards
    assert np.array_equal(part.features, want[2990:3010].astype(part.features.dtype))


@pytest.mark.parametrize("fast", [True, False], ids=["as-stored", "float32"])
def test_a_flipped_bit_in_a_hashed_chunk_is_caught_without_fletcher32(store, fast):
    """The store's reader reads hashed chunks as stored: xxh3_64 catches the flip."""
    path = shard_path(store, 1)
    flip_in(path, "features", 0.3)
    options = {"columns": ("features", "row_ids"), "features_dtype": None} if fast else {}
    with pytest.raises(CorruptData, match=f"shard {path.name} cannot be read \\(a features "
                       "chunk fails its xxh3_64 checksum") as exc:
        list(store.iter_rows(256, **options))
    one_line(exc)


def test_a_shard_without_chunk_hashes_reads_the_same_through_fletcher32(store):
    """Shards written before the chunk hashes: HDF5 reads and checks their features."""
    before = store.select(with_views=True)
    path = shard_path(store, 0)
    with h5py.File(path, "r+") as f:
        del f["features_xxh3"]
    store = Store.open(store.path)
    after = store.select(with_views=True)
    assert np.array_equal(before.features, after.features)
    assert np.array_equal(before.views, after.views)
    flip_in(path, "features", 0.3)
    with pytest.raises(CorruptData, match="fails its fletcher32 checksum"):
        store.select()


def test_chunk_hashes_of_the_wrong_count_are_corrupt_data(store):
    path = shard_path(store, 0)
    with h5py.File(path, "r+") as f:
        hashes = f["features_xxh3"][()]
        del f["features_xxh3"]
        f.create_dataset("features_xxh3", data=hashes[:-1])
    with pytest.raises(CorruptData, match=f"shard {path.name} has {len(hashes) - 1} features "
                       "chunk hashes for 3000 rows"):
        list(store.iter_rows(1000))
