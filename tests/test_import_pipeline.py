"""The fast import path (issue 11): ids hashed in one C-level pass, the next chunk prepared in
a thread, shards written by HDF5 into reserved disk blocks (or built in a writer's image and
saved with O_DIRECT); the stored data and the errors are those of the plain sequential path."""

from __future__ import annotations

import errno
import hashlib
import json
import threading
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from test_dumps import DIM, clip_dump
from test_ingest_errors import cli, error_line, npz, tree

from tipretrieval.errors import BadInput
from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store import id_hash
from tipretrieval.store import shard as shard_mod
from tipretrieval.store.dump_read import Columns, _texts
from tipretrieval.store.dumps import JOURNAL, DumpOptions, import_dump
from tipretrieval.store.id_hash import id_hashes
from tipretrieval.store.normalise import normalised, row_norms, unit_rows
from tipretrieval.store.store import Store
from tipretrieval.util import file_image
from tipretrieval.util.prefetch import prefetched

ONE_ID_HASH = {  # each algorithm of `store.id_hash`, applied to one id's UTF-8 bytes
    "blake2b_8": lambda b: int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little"),
    "xxh3_64": xxhash.xxh3_64_intdigest,
}


@pytest.mark.parametrize("algorithm", sorted(ONE_ID_HASH))
def test_id_hashes_equal_the_hash_of_each_id(algorithm):
    rng = np.random.default_rng(0)
    ids = ["".join(map(chr, rng.integers(32, 0x2FFF, rng.integers(1, 40)))) for _ in range(500)]
    ids += ["", "é", "日本語", "\U0001f600" * 3, "x" * 100_000, "a\nb", "same", "same"]
    encoded = shard_mod.encode(ids)
    got = id_hashes(encoded, algorithm)
    assert got.dtype == np.uint64
    assert got.tolist() == [ONE_ID_HASH[algorithm](s.encode()) for s in ids]
    assert id_hashes(shard_mod.encode([]), algorithm).tolist() == []


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_a_string_column_is_packed_as_a_shard_stores_it_from_arrows_buffers(kind):
    column = pa.chunked_array([pa.array(["skip", "a", None, "ééé"], kind),
                               pa.array(["", "x" * 70_000], kind)]).slice(1)
    strings, encoded, packed = _texts(column, None, with_bytes=True)
    assert strings.tolist() == ["a", "None", "ééé", "", "x" * 70_000]
    want = shard_mod.Text.of(shard_mod.encode(strings))
    assert encoded.tolist() == [s.encode() for s in strings]
    assert packed.data == want.data and packed.ends.tolist() == want.ends.tolist()
    assert packed.ends.dtype == np.int64
    assert _texts(column, None)[1:] == (None, None)  # (a column used as strings only)


def test_keys_made_from_packed_ids_equal_keys_of_the_strings():
    ids = ["a", "ééé", "", "x" * 1000, "a/b"]
    strings, encoded, packed = _texts(pa.chunked_array([pa.array(ids)]), None, with_bytes=True)
    keys = shard_mod.IdKeys(None, id_hashes(encoded, id_hash.NEW), id_hash.NEW, packed)
    plain = shard_mod.IdKeys.of(ids, id_hash.NEW)
    assert keys.encoded.tolist() == plain.encoded.tolist() == [s.encode() for s in ids]
    assert len(keys) == 5 and keys.packed() is packed
    assert keys.take([4, 0]).encoded.tolist() == [b"a/b", b"a"]
    assert plain.among(keys).all() and keys.among(plain.take([1, 3])).tolist() == [
        False, True, False, True, False]


def test_a_new_store_hashes_ids_by_xxh3_and_says_so(tmp_path):
    store = Store.create(tmp_path / "s", dim=DIM, provenance=Provenance("e", "w", DIM))
    assert store.manifest.id_hash == "xxh3_64" == id_hash.NEW
    assert json.loads((store.path / "manifest.json").read_text())["id_hash"] == "xxh3_64"


def test_prefetched_makes_one_item_ahead_and_raises_where_the_item_was_due():
    made, used = [], []

    def items():
        for i in range(5):
            made.append(i)
            if i == 3:
                raise BadInput("item 3 is bad")
            yield i
    with pytest.raises(BadInput, match="item 3 is bad"):
        for i in prefetched(items()):
            assert made[-1] <= i + 1  # never more than one item ahead
            used.append(i)
    assert used == [0, 1, 2] and made == [0, 1, 2, 3]
    assert list(prefetched(iter(()))) == []


def test_prefetched_items_are_made_in_another_thread():
    threads = []

    def items():
        for i in range(3):
            threads.append(threading.get_ident())
            yield i
    assert list(prefetched(items())) == [0, 1, 2]
    assert threading.get_ident() not in threads


def files_of(path: Path) -> list[bytes]:
    """The store's shard and id index files in manifest order (names differ between stores)."""
    m = Store.open(path).manifest
    return [(path / "shards" / s.name).read_bytes() for s in m.shards] + \
        [(path / r.name).read_bytes() for r in m.id_runs]


def datasets(shard: Path) -> dict:
    """Every dataset of a shard file: values, dtype, chunks, checksum filter."""
    with h5py.File(shard, "r") as f:
        return {k: (d[()].tolist(), d.dtype.str, d.chunks, d.fletcher32) for k, d in f.items()}


COLUMNS = Columns(ids="image_path", labels="label", sources="image_path")


def test_prefetched_import_writes_the_bytes_of_the_sequential_one(tmp_path):
    clip_dump(tmp_path / "dump", files=3, rows=500)
    for prefetch in (True, False):
        import_dump(tmp_path / "dump", tmp_path / f"s{prefetch}", DumpOptions(
            columns=COLUMNS, shard_rows=200, progress=False, prefetch=prefetch))
    fast, plain = files_of(tmp_path / "sTrue"), files_of(tmp_path / "sFalse")
    assert len(fast) == 9 + len(Store.open(tmp_path / "sTrue").manifest.id_runs)
    assert fast == plain
    a, b = Store.open(tmp_path / "sTrue").manifest, Store.open(tmp_path / "sFalse").manifest
    assert [s.digest for s in a.shards] == [s.digest for s in b.shards]
    assert a.classes == b.classes and a.generation == b.generation
    got = Store.open(tmp_path / "sTrue").select(columns=("ids", "features", "sources"))
    want = [f"imgs/{n}/{i}.jpg" for n in range(3) for i in range(500)]
    assert got.ids.tolist() == want and got.sources.tolist() == want  # one column for both


def test_sources_from_the_id_column_with_a_null_are_read_as_sources_are(tmp_path):
    """A null in the one column is the id "None" but an empty source, which is refused."""
    clip_dump(tmp_path / "dump", files=1, rows=20)
    meta = tmp_path / "dump" / "metadata" / "metadata_0.parquet"
    paths = [None if i == 3 else f"p{i}" for i in range(20)]
    pq.write_table(pa.table({"image_path": paths, "label": ["cat"] * 20}), meta)
    with pytest.raises(BadInput, match="source '' is empty"):
        import_dump(tmp_path / "dump", tmp_path / "s", DumpOptions(columns=COLUMNS,
                                                                   progress=False))
    import_dump(tmp_path / "dump", tmp_path / "t", DumpOptions(
        columns=Columns(ids="image_path", labels="label"), progress=False))
    assert Store.open(tmp_path / "t").select().ids[3] == "None"


def test_an_error_preparing_a_chunk_is_the_same_error_after_the_same_commits(tmp_path):
    clip_dump(tmp_path / "dump", files=2, rows=300)
    path = tmp_path / "dump" / "img_emb" / "img_emb_1.npy"
    x = np.load(path)
    x[250, 3] = np.nan  # the second part's second chunk
    np.save(path, x)
    outcomes = []
    for prefetch in (True, False):
        store = tmp_path / f"s{prefetch}"
        with pytest.raises(BadInput) as exc:
            import_dump(tmp_path / "dump", store, DumpOptions(
                columns=COLUMNS, shard_rows=200, progress=False, prefetch=prefetch))
        journal = json.loads((store / JOURNAL).read_text())
        outcomes.append((str(exc.value), len(Store.open(store)),
                         sorted((v["rows"], v["done"]) for v in journal["parts"].values())))
    assert outcomes[0] == outcomes[1]
    message, rows, parts = outcomes[0]
    assert "contain NaN or inf" in message and "imgs/1/250.jpg" in message
    assert "\n" not in message and rows == 500 and parts == [(200, False), (300, True)]


def test_normalising_in_place_keeps_unit_rows_and_returns_the_norms_of_the_result():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    x[[7, 200]] *= 3
    want = unit_rows(x, np.arange(300), "features", np.float16)
    y = x.copy()
    out, norms = normalised(y, np.arange(300), "features", np.float16, out=y)
    assert out is y and out.tobytes() == want.tobytes()
    np.testing.assert_array_equal(norms, row_norms(want))
    out32, norms32 = normalised(x, np.arange(300), "features", np.float32)
    np.testing.assert_array_equal(norms32, row_norms(out32))


def rows_for_shard(n: int = 3000) -> Rows:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return Rows.make([f"r{i}" for i in range(n)], x / np.linalg.norm(x, axis=1, keepdims=True),
                     rng.integers(-1, 3, n), rng.choice(["a", "b"], n),
                     sources=[f"/s/{i}.jpg" for i in range(n)])


def test_a_shard_built_in_an_image_holds_what_one_written_into_reserved_blocks_does(
        tmp_path, monkeypatch):
    """With an image (the writer process's) HDF5 builds a shard in memory, saved with O_DIRECT
    or plainly where refused; without one, or above IMAGE_BYTES, it writes into reserved blocks
    (h5py's sec2 driver lays out the metadata a little differently), and where nothing can be
    reserved into a new image: the same datasets, digests of the files' bytes."""
    rows = rows_for_shard()
    data = shard_mod.ShardData.of(rows, shard_mod.IdKeys.of(rows.ids, id_hash.NEW), "float16")
    image = file_image.FileImage(capacity=1)

    def write(name: str, reuse: file_image.FileImage | None = None) -> bytes:
        path = tmp_path / name
        info = shard_mod.write_data(path, data, 0, reuse)
        written = path.read_bytes()
        assert info.digest == f"xxh3_128:{xxhash.xxh3_128(written).hexdigest()}"
        assert info.nbytes == len(written)
        return written
    in_image, again = write("a.h5", image), write("b.h5", image)  # (the image is reused)
    monkeypatch.setattr(file_image, "_O_DIRECT", 0)
    plain = write("c.h5", image)
    reserved = write("d.h5")
    assert (tmp_path / "d.h5").stat().st_blocks * 512 < len(reserved) + (1 << 20)
    monkeypatch.setattr(shard_mod, "IMAGE_BYTES", 0)
    too_big = write("e.h5", image)
    monkeypatch.setattr(shard_mod, "reserve", lambda path, nbytes: False)
    new_image = write("f.h5")
    assert in_image == again == plain == new_image and reserved == too_big != in_image
    assert datasets(tmp_path / "a.h5") == datasets(tmp_path / "d.h5")
    assert datasets(tmp_path / "a.h5")["features"][0] == rows.features.astype(np.float16).tolist()
    image.close()


def test_a_full_disk_at_the_reservation_is_one_line_exit_1_and_stores_nothing(tmp_path,
                                                                             monkeypatch):
    assert cli("import", npz(tmp_path / "b.npz"), "--store", tmp_path / "s").exit_code == 0
    before = tree(tmp_path / "s")

    def full(path, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(shard_mod, "reserve", full)
    line = error_line(cli("import", npz(tmp_path / "a.npz"), "--store", tmp_path / "s"), 1)
    assert "disk full while writing store" in line and "No space left" in line
    assert tree(tmp_path / "s") == before


def test_a_full_disk_saving_an_image_is_an_oserror_and_leaves_no_file(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(file_image.os, "pwrite", full)
    monkeypatch.setattr(file_image, "open", full, raising=False)
    rows = rows_for_shard(10)
    data = shard_mod.ShardData.of(rows, shard_mod.IdKeys.of(rows.ids, id_hash.NEW), "float16")
    image = file_image.FileImage()
    with pytest.raises(OSError, match="No space left"):
        shard_mod.write_data(tmp_path / "a.h5", data, 0, image)
    assert list(tmp_path.iterdir()) == []
    image.close()


def test_float16_row_norms_are_not_finite_for_rows_with_nan_or_inf():
    """The fast float16 cast maps NaN and inf to finite numbers: the norms must not."""
    x = np.full((5000, 2, DIM), 0.25, np.float16)
    x[3, 1, 0], x[4100, 0, 5], x[4999, 1, 2] = np.nan, np.inf, -np.inf
    bad = np.argwhere(~np.isfinite(row_norms(x))).tolist()
    assert bad == [[3, 1], [4100, 0], [4999, 1]]
    assert np.isfinite(row_norms(x[5:4000])).all()


def test_ids_read_as_utf8_bytes_from_parquet_hash_and_store_as_encoded_str(tmp_path):
    """The reader hands over a string id column's bytes (not encoded again): non-ASCII ids
    and a null ("None") are stored, hashed and found as their str's UTF-8 encoding."""
    ids = ["é/1", "日本語", None, "\U0001f600", "plain"]
    x = np.random.default_rng(6).standard_normal((5, DIM)).astype(np.float32)
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(x.reshape(-1)), DIM), "key": ids}), tmp_path / "a.parquet")
    import_dump(tmp_path / "a.parquet", tmp_path / "s", DumpOptions(
        columns=Columns(ids="key"), shard_rows=2, progress=False))
    store = Store.open(tmp_path / "s")
    want = ["é/1", "日本語", "None", "\U0001f600", "plain"]
    assert store.select().ids.tolist() == want
    assert store.existing_ids(want + ["other"]).tolist() == [True] * 5 + [False]
    assert Store.open(tmp_path / "s").manifest.shards[0].rows == 2


def test_label_names_read_dictionary_encoded_label_as_names_do(tmp_path):
    """String and dictionary label columns (read as arrow's codes): new names extend the
    classes in sorted order per chunk, null and "" are unlabelled."""
    names = ["b", None, "a", "", "c", "a", "d", None, "b"]
    x = np.random.default_rng(8).standard_normal((9, DIM)).astype(np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)
    got = {}
    for kind, column in (("string", pa.array(names)),
                         ("dictionary", pa.array(names).dictionary_encode())):
        (tmp_path / kind).mkdir()
        pq.write_table(pa.table({"embedding": emb, "label": column}),
                       tmp_path / kind / "a.parquet")
        import_dump(tmp_path / kind, tmp_path / f"s{kind}", DumpOptions(
            columns=Columns(labels="label"), shard_rows=4, progress=False))
        store = Store.open(tmp_path / f"s{kind}")
        got[kind] = (store.classes, store.select().labels.tolist())
    # chunk 1 (b, -, a, "") adds a, b; chunk 2 (c, a, d, -) adds c, d; chunk 3: b
    assert got["string"] == got["dictionary"] == (
        ["a", "b", "c", "d"], [1, -1, 0, -1, 2, 0, 3, -1, 1])
