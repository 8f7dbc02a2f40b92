"""Store round trips, batched and filtered reading, snapshots, corruption and validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tipretrieval.errors import BadInput, CorruptData, NewerFormat, StoreLocked
from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store.hold import hold
from tipretrieval.store.shard import as_float32
from tipretrieval.store.store import Store

DIM = 16
CLASSES = ["ant", "bee", "cat", "dog"]
PROV = Provenance("ViT-B-32", "openai", DIM)


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random L2-normalised float32 vectors along the last axis."""
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_rows(n: int, seed: int, prefix: str = "r", views: int = 0, sources: bool = False,
              dim: int = DIM, classes: int = len(CLASSES)) -> Rows:
    """Deterministic rows: ids `prefix<seed>-<i>`, labels in -1..classes-1, mixed splits."""
    rng = np.random.default_rng(seed)
    return Rows.make(
        ids=[f"{prefix}{seed}-{i}" for i in range(n)], features=unit(rng, n, dim),
        labels=rng.integers(-1, classes, n), splits=rng.choice(["train", "val", "query"], n),
        sources=[f"/img/{seed}/{i}.jpg" for i in range(n)] if sources else None,
        views=unit(rng, n, views, dim) if views else None,
    )


def on_disk(x: np.ndarray, dtype: str) -> np.ndarray:
    """What a float32 array reads back as after storage in `dtype`."""
    return x.astype(dtype).astype(np.float32)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.create(tmp_path / "store", dim=DIM, provenance=PROV, classes=CLASSES)


def assert_rows_equal(got: Rows, want: Rows, dtype: str = "float16") -> None:
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.splits, want.splits)
    np.testing.assert_array_equal(got.features, on_disk(want.features, dtype))
    assert got.features.dtype == np.float32
    for name in ("sources", "views"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        if w is not None:
            np.testing.assert_array_equal(g, w if name == "sources" else on_disk(w, dtype))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_every_field_over_several_appends(tmp_path, dtype):
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES, dtype=dtype)
    parts = [make_rows(300, 1, views=3, sources=True), make_rows(50, 2), make_rows(7, 3, views=3)]
    row_ids = [store.append(p) for p in parts]
    np.testing.assert_array_equal(np.concatenate(row_ids), np.arange(357))
    assert (len(store), store.generation, store.dim, store.classes) == (357, 3, DIM, CLASSES)
    reopened = Store.open(store.path)
    assert (reopened.store_id, reopened.provenance, len(reopened)) == \
        (store.store_id, PROV, 357)
    for part, ids in zip(parts, row_ids, strict=True):
        got = reopened.select(ids=part.ids, with_views=True)
        assert_rows_equal(got, part, dtype)
        np.testing.assert_array_equal(got.row_ids, ids)
    assert reopened.select(ids=parts[0].ids).views is None  # views only when asked for


def test_float16_features_stay_close_to_input(store):
    rows = make_rows(100, 5)
    store.append(rows)
    got = store.select()
    assert np.abs(got.features - rows.features).max() < 1e-3


def test_batches_equal_reading_all(store):
    parts = [make_rows(5000, 1), make_rows(3000, 2, sources=True), make_rows(1234, 3)]
    for p in parts:
        store.append(p)
    whole = Rows.concat([make_rows(5000, 1), make_rows(1234, 3)])  # no-sources parts
    for batch_size in (1000, 4096, 5000, 20000):
        batches = list(store.iter_rows(batch_size))
        assert all(len(b) <= batch_size for b in batches)
        joined = Rows.concat(batches)
        np.testing.assert_array_equal(joined.row_ids, np.arange(len(store)))
        np.testing.assert_array_equal(joined.ids, np.concatenate([p.ids for p in parts]))
        np.testing.assert_array_equal(
            joined.features, on_disk(np.concatenate([p.features for p in parts]), "float16"))
    # full batches, except where rows with sources meet rows without (never mixed)
    assert [len(b) for b in store.iter_rows(1000)] == [1000] * 9 + [234]
    assert [len(b) for b in store.iter_rows(3000)] == [3000, 2000, 3000, 1234]
    no_sources = store.select(ids=whole.ids)
    assert_rows_equal(no_sources, whole)


def test_filters_match_numpy_masks(store):
    parts = [make_rows(4000, 1), make_rows(2500, 2)]
    for p in parts:
        store.append(p)
    allrows = Rows.concat(parts)
    cases = [
        ({"split": "train"}, allrows.splits == "train"),
        ({"split": ["val", "query"]}, allrows.splits != "train"),
        ({"labels": 2}, allrows.labels == 2),
        ({"labels": [0, 3], "split": "val"}, np.isin(allrows.labels, [0, 3]) &
         (allrows.splits == "val")),
        ({"ids": list(allrows.ids[::97]) + ["not-there"]}, np.arange(6500) % 97 == 0),
    ]
    for kwargs, mask in cases:
        for batch_size in (333, 8192):
            got = Rows.concat(list(store.iter_rows(batch_size, **kwargs)))
            np.testing.assert_array_equal(got.row_ids, np.flatnonzero(mask), str(kwargs))
            np.testing.assert_array_equal(got.features,
                                          on_disk(allrows.features[mask], "float16"))
    assert len(store.select(split="nonexistent")) == 0
    labelled = store.labelled(split="train")
    np.testing.assert_array_equal(labelled.row_ids,
                                  np.flatnonzero((allrows.labels >= 0) &
                                                 (allrows.splits == "train")))


def test_class_counts_and_existing_ids(store):
    rows = make_rows(3000, 1)
    store.append(rows)
    counts = np.bincount(rows.labels[rows.labels >= 0], minlength=len(CLASSES))
    assert store.class_counts() == dict(zip(CLASSES, counts.tolist(), strict=True))
    val = rows.labels[(rows.labels >= 0) & (rows.splits == "val")]
    assert store.class_counts("val") == dict(
        zip(CLASSES, np.bincount(val, minlength=4).tolist(), strict=True))
    assert store.split_counts() == {s: int((rows.splits == s).sum()) for s in
                                    ("query", "train", "val")}
    np.testing.assert_array_equal(store.existing_ids([rows.ids[5], "nope", rows.ids[-1]]),
                                  [True, False, True])


def test_add_classes_and_append_with_new_vocabulary(store):
    assert store.add_classes(["cat", "eel"]) == [2, 4]
    assert Store.open(store.path).classes == CLASSES + ["eel"]
    rows = make_rows(20, 1, classes=6)
    store.append(rows, classes=CLASSES + ["eel", "fox"])
    assert Store.open(store.path).classes == CLASSES + ["eel", "fox"]
    with pytest.raises(BadInput, match="differs from the store's vocabulary at label 0"):
        store.append(make_rows(5, 2), classes=["bee", "ant"])


def test_adding_classes_is_one_new_generation_and_only_when_a_name_is_new(store):
    before = store.generation
    assert store.add_classes(["eel"]) == [4]
    assert store.generation == Store.open(store.path).generation == before + 1
    assert store.add_classes(["ant", "eel"]) == [0, 4]  # nothing new: nothing written
    assert Store.open(store.path).generation == before + 1


def test_snapshot_isolation_and_refresh(store):
    store.append(make_rows(100, 1))
    reader = Store.open(store.path)
    store.append(make_rows(100, 2))
    assert len(reader) == 100 and len(store) == 200
    assert len(reader.select()) == 100
    assert len(reader.refresh()) == 200 and reader.generation == store.generation


def _shard_path(store: Store, i: int = 0):
    return store.path / "shards" / store.manifest.shards[i].name


def test_verify_names_a_corrupt_shard(store):
    store.append(make_rows(100, 1))
    store.append(make_rows(100, 2))
    store.verify()
    path = _shard_path(store, 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match=f"shard {path.name} fails its xxh3_128 checksum"):
        store.verify()


def test_truncated_or_missing_shard_is_named_on_read(store):
    store.append(make_rows(5000, 1))
    store.append(make_rows(100, 2))
    path = _shard_path(store, 1)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    batches = store.iter_rows(1000)
    assert len(next(batches)) == 1000  # streams: the first shard reads before the bad one
    with pytest.raises(CorruptData, match=f"shard {path.name} is truncated"):
        list(batches)
    path.unlink()
    with pytest.raises(CorruptData, match=f"shard {path.name} is missing"):
        store.select()
    with pytest.raises(CorruptData, match=path.name):
        store.verify()


def test_orphans_of_a_killed_writer_are_ignored_then_removed(store):
    store.append(make_rows(10, 1))
    orphans = [store.path / "shards" / ".000000000010-dead.h5.x.tmp",
               store.path / "shards" / "000000000010-deadbeef.h5",
               store.path / ".manifest.json.abc.tmp"]
    for p in orphans:
        p.write_bytes(b"half written")
    reopened = Store.open(store.path)
    assert len(reopened.select()) == 10
    reopened.verify()
    reopened.append(make_rows(10, 2))
    assert not any(p.exists() for p in orphans)
    assert len(Store.open(store.path).select()) == 20


HOLDER = """import sys, time
from tipretrieval.store.store import Store
with Store.writing(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _set_timeout(store: Store, seconds: float) -> Store:
    store.lock_timeout = seconds
    return store


def _hold(path, seconds: float) -> None:
    with hold(path, timeout=seconds):
        pass


SECOND_WRITERS = {
    "opened with lock_timeout=": lambda path, t: Store.open(path, lock_timeout=t).append(
        make_rows(5, 1)),
    "instance lock_timeout set": lambda path, t: _set_timeout(Store.open(path), t).append(
        make_rows(5, 1)),
    "compact": lambda path, t: Store.open(path, lock_timeout=t).compact(),
    "hold(timeout=)": _hold,
}


def test_a_second_writer_fails_after_its_own_timeout_with_one_line(store):
    """Another process holds the writer lock: each second writer with a 0.3 s timeout fails
    after that timeout (not the 60 s default) with one line, and nothing is stored."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for name, write in SECOND_WRITERS.items():
            start = time.monotonic()
            with pytest.raises(StoreLocked) as exc:
                write(store.path, 0.3)
            waited = time.monotonic() - start
            assert 0.3 <= waited < 10, (name, waited)
            assert str(exc.value) == (f"store {store.path} is locked by another writer for "
                                      "over 0.3 s: wait for the other import/encode to finish "
                                      "and retry"), name
    finally:
        holder.kill()
        holder.wait()
    assert len(Store.open(store.path)) == 0 and store.manifest.generation == 0
    assert len(Store.open(store.path, lock_timeout=0.3).append(make_rows(5, 1))) == 5


def test_not_a_store_and_newer_format(tmp_path, store):
    with pytest.raises(BadInput, match="is not a tipretrieval store"):
        Store.open(tmp_path)
    manifest = store.path / "manifest.json"
    obj = json.loads(manifest.read_text())
    obj["format_version"] = 99
    manifest.write_text(json.dumps(obj))
    with pytest.raises(NewerFormat, match="store manifest v99; this one reads up to v4"):
        Store.open(store.path)
    with pytest.raises(BadInput, match="already a store"):
        Store.create(store.path, dim=DIM, provenance=PROV)


def _bad_features(rows: Rows, value: float) -> Rows:
    rows.features[3, 0] = value
    return rows


BAD_APPENDS = [
    (lambda: make_rows(5, 1, dim=DIM + 1), {}, "features have shape .* holds dim 16"),
    (lambda: _bad_features(make_rows(5, 1), np.nan), {}, "contain NaN or inf"),
    (lambda: _bad_features(make_rows(5, 1), np.inf), {}, "contain NaN or inf"),
    (lambda: _bad_features(make_rows(5, 1), 3.0), {}, "not L2-normalised"),
    (lambda: make_rows(50, 1, classes=7), {}, "outside -1..3"),
    (lambda: Rows.concat([make_rows(5, 1), make_rows(2, 1)]), {}, "more than once"),
    (lambda: make_rows(5, 0), {}, "already exist in store"),
    (lambda: make_rows(5, 1), {"provenance": Provenance("RN50", "openai", DIM)},
     "come from encoder RN50"),
]


@pytest.mark.parametrize("build, kwargs, message", BAD_APPENDS)
def test_bad_appends_are_refused_and_change_nothing(store, build, kwargs, message):
    store.append(make_rows(5, 0))
    before = sorted(os.listdir(store.path / "shards")), store.manifest.to_json()
    with pytest.raises(BadInput, match=message):
        store.append(build(), **kwargs)
    after = Store.open(store.path)
    assert (sorted(os.listdir(store.path / "shards")), after.manifest.to_json()) == before


def test_bad_views_are_refused(store):
    rows = make_rows(5, 1, views=2)
    rows.views = rows.views[:, :, :-1]
    with pytest.raises(BadInput, match="views have shape"):
        store.append(rows)


def test_float16_to_float32_conversion_is_exact_for_every_finite_value():
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)].reshape(-1, 2)
    got = as_float32(halves)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), halves.astype(np.float32).view(np.uint32))


def test_columns_and_features_dtype_read_only_what_is_asked(store):
    rows = make_rows(5000, 1, views=2, sources=True)
    store.append(rows)
    full = store.select(with_views=True)
    for columns in (("features",), ("features", "labels", "row_ids"), ("ids", "features")):
        for batch_size in (777, 8192):
            batches = list(store.iter_rows(batch_size, columns=columns, with_views=True))
            for name in ("ids", "labels", "splits", "sources", "row_ids"):
                if name not in columns:
                    assert all(getattr(b, name) is None for b in batches), name
            got = Rows.concat(batches)
            for name in columns:
                np.testing.assert_array_equal(getattr(got, name), getattr(full, name))
            np.testing.assert_array_equal(got.views, full.views)
    stored = store.select(with_views=True, columns=("features",), features_dtype=None)
    assert stored.features.dtype == stored.views.dtype == np.float16
    np.testing.assert_array_equal(stored.features, rows.features.astype(np.float16))
    np.testing.assert_array_equal(stored.views, rows.views.astype(np.float16))
    picked = store.select(labels=[0, 1], split="train", features_dtype="float16")
    mask = np.isin(rows.labels, [0, 1]) & (rows.splits == "train")
    np.testing.assert_array_equal(picked.features, rows.features[mask].astype(np.float16))
    for bad in ({"columns": ("labels",)}, {"columns": ("features", "views")},
                {"features_dtype": "int8"}):
        with pytest.raises(BadInput, match="columns|features_dtype"):
            store.iter_rows(**bad)


def test_float32_store_converts_down_on_request(tmp_path):
    store = Store.create(tmp_path / "s", dim=DIM, provenance=PROV, classes=CLASSES,
                         dtype="float32")
    rows = make_rows(300, 1)
    store.append(rows)
    np.testing.assert_array_equal(store.select(features_dtype=None).features, rows.features)
    np.testing.assert_array_equal(store.select(features_dtype="float16").features,
                                  rows.features.astype(np.float16))


def test_batches_mix_sources_only_when_sources_are_not_read(store):
    for p in (make_rows(5000, 1), make_rows(3000, 2, sources=True), make_rows(1234, 3)):
        store.append(p)
    assert [len(b) for b in store.iter_rows(3000)] == [3000, 2000, 3000, 1234]
    lean = list(store.iter_rows(3000, columns=("features", "row_ids")))
    assert [len(b) for b in lean] == [3000, 3000, 3000, 234]
    np.testing.assert_array_equal(np.concatenate([b.row_ids for b in lean]), np.arange(9234))


def test_sparse_and_dense_masks_read_the_same_rows(store):
    rows = make_rows(20000, 1, views=2)
    store.append(rows)
    rng = np.random.default_rng(7)
    for keep_every in (1, 2, 3, 200, 5000):  # dense masks read ranges, sparse ones read runs
        wanted = rows.ids[::keep_every][rng.permutation(len(rows.ids[::keep_every]))]
        got = store.select(ids=wanted, with_views=True)
        np.testing.assert_array_equal(got.row_ids, np.arange(0, 20000, keep_every))
        np.testing.assert_array_equal(got.views, on_disk(rows.views[::keep_every], "float16"))
        np.testing.assert_array_equal(got.features,
                                      on_disk(rows.features[::keep_every], "float16"))


def test_non_store_files_in_the_store_are_left_alone(store):
    store.append(make_rows(10, 1))
    report = store.path / "extract-report-train.json"
    report.write_text('{"bad": []}\n')
    notes = store.path / "shards" / "README.txt"
    notes.write_text("not a shard\n")
    Store.open(store.path).verify()
    store.append(make_rows(10, 2))
    assert report.read_text() == '{"bad": []}\n' and notes.read_text() == "not a shard\n"
    reopened = Store.open(store.path)
    reopened.verify()
    assert len(reopened.select()) == 20


def test_hash_collisions_are_confirmed_by_exact_id(store, monkeypatch):
    import tipretrieval.store.shard as shard_mod

    def colliding(encoded, algorithm):  # every id shares one of two hashes
        return np.array([len(b) % 2 for b in encoded.tolist()], dtype=np.uint64)
    monkeypatch.setattr(shard_mod, "id_hashes", colliding)
    first, second = make_rows(300, 1), make_rows(200, 2)
    store.append(first)
    store.append(second)
    probe = [first.ids[7], "r1-7x", second.ids[-1], "r2-1999", first.ids[299]]
    np.testing.assert_array_equal(store.existing_ids(probe), [True, False, True, False, True])
    np.testing.assert_array_equal(store.select(ids=probe).row_ids, [7, 299, 499])
    with pytest.raises(BadInput, match="already exist"):
        store.append(make_rows(3, 2))


def test_a_writer_reads_the_manifest_again_only_when_another_replaced_it(store, monkeypatch):
    from tipretrieval.store import store as store_mod
    loads = []
    real = store_mod.Manifest.load
    monkeypatch.setattr(store_mod.Manifest, "load",
                        staticmethod(lambda path: loads.append(path) or real(path)))
    a, b = Store.open(store.path), Store.open(store.path)
    loads.clear()
    for k in range(3):
        a.append(make_rows(5, k))
    assert len(loads) == 1  # (its first append; then it knows the file it wrote)
    b.append(make_rows(5, 7, prefix="b"))  # another writer replaces the manifest
    a.append(make_rows(5, 8))
    got = Store.open(store.path).select(columns=("ids", "features", "row_ids"))
    assert got.row_ids.tolist() == list(range(25))
    assert got.ids[15:20].tolist() == [f"b7-{i}" for i in range(5)]
    assert got.ids[20:].tolist() == [f"r8-{i}" for i in range(5)]
