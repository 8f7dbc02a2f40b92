"""Streaming import of embedding dumps: layouts, formats, resume after kill -9, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from procs import wait_for_shards, wait_until_all_open

from tipretrieval.cli import main
from tipretrieval.errors import BadInput
from tipretrieval.store import dump_read
from tipretrieval.store.dump_read import Columns, DumpPart, read_chunks
from tipretrieval.store.dumps import JOURNAL, DumpOptions, import_dump
from tipretrieval.store.lock import LOCK_NAME, writer_lock
from tipretrieval.store.store import Store

CLI = [sys.executable, "-m", "tipretrieval"]
DIM = 16


def clip_dump(root: Path, files: int = 3, rows: int = 500, seed: int = 0) -> np.ndarray:
    """A clip-retrieval folder (img_emb/img_emb_N.npy float16 + metadata/metadata_N.parquet);
    returns all embeddings in order (float32)."""
    rng = np.random.default_rng(seed)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    out = []
    for n in range(files):
        x = rng.standard_normal((rows, DIM)).astype(np.float16)
        np.save(root / "img_emb" / f"img_emb_{n}.npy", x)
        pq.write_table(pa.table({
            "image_path": [f"imgs/{n}/{i}.jpg" for i in range(rows)],
            "caption": ["x"] * rows,
            "label": [["cat", "dog", None][i % 3] for i in range(rows)],
        }), root / "metadata" / f"metadata_{n}.parquet", row_group_size=170)
        out.append(x.astype(np.float32))
    return np.concatenate(out)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stored(path: Path):
    return Store.open(path).select(columns=("ids", "features", "labels", "sources", "row_ids"))


def test_clip_retrieval_layout_by_cli(tmp_path):
    x = clip_dump(tmp_path / "dump")
    res = CliRunner().invoke(main, [
        "import", str(tmp_path / "dump"), "--store", str(tmp_path / "s"), "--id-column",
        "image_path", "--path-column", "image_path", "--label-column", "label",
        "--shard-rows", "200", "--quiet", "--encoder", "ViT-B-32", "--weights", "openai"])
    assert res.exit_code == 0, res.output
    assert "imported 1500 rows from 3 files (0 already imported)" in res.output
    store = Store.open(tmp_path / "s")
    assert [s.rows for s in store.manifest.shards] == [200, 200, 100] * 3
    assert store.classes == ["cat", "dog"] and store.provenance.encoder == "ViT-B-32"
    rows = stored(tmp_path / "s")
    assert rows.ids[:2].tolist() == ["imgs/0/0.jpg", "imgs/0/1.jpg"]
    assert rows.ids[-1] == "imgs/2/499.jpg" and rows.sources[700] == "imgs/1/200.jpg"
    assert rows.labels[:4].tolist() == [0, 1, -1, 0]
    np.testing.assert_allclose(rows.features, unit(x), atol=2e-3)  # float16 on disk
    again = CliRunner().invoke(main, ["import", str(tmp_path / "dump"), "--store",
                                      str(tmp_path / "s"), "--quiet", "--id-column",
                                      "image_path"])
    assert "imported 0 rows from 0 files (3 already imported)" in again.output


@pytest.mark.parametrize("kind", ["fixed", "variable", "npz", "npy-glob"])
def test_formats(tmp_path, kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, DIM)).astype(np.float32)
    ids = [f"r{i}" for i in range(300)]
    for part, (a, b) in enumerate([(0, 120), (120, 300)]):
        if kind in ("fixed", "variable"):
            values = pa.array(x[a:b].reshape(-1))
            emb = (pa.FixedSizeListArray.from_arrays(values, DIM) if kind == "fixed" else
                   pa.ListArray.from_arrays(pa.array(np.arange(0, (b - a + 1) * DIM, DIM,
                                                               dtype=np.int32)), values))
            pq.write_table(pa.table({"emb": emb, "key": ids[a:b]}),
                           tmp_path / f"part{part}.parquet", row_group_size=50)
        elif kind == "npz":
            np.savez_compressed(tmp_path / f"part{part}.npz", features=x[a:b],
                                ids=np.array(ids[a:b]))
        else:
            np.save(tmp_path / f"part{part}.npy", x[a:b])
    source = str(tmp_path / "part*.npy") if kind == "npy-glob" else str(tmp_path)
    columns = Columns("emb", "key") if kind in ("fixed", "variable") else Columns()
    done = import_dump(source, tmp_path / "s", DumpOptions(columns=columns, shard_rows=64,
                                                           progress=False))
    rows = stored(tmp_path / "s")
    assert done.rows == 300 and len(rows) == 300
    np.testing.assert_allclose(rows.features, unit(x), atol=2e-3)
    want = ([f"part0.npy:{i}" for i in range(120)] + [f"part1.npy:{i}" for i in range(180)]
            if kind == "npy-glob" else ids)
    assert rows.ids.tolist() == want


def test_npz_streaming_equals_load(tmp_path):
    x = np.random.default_rng(2).standard_normal((257, 8)).astype(np.float16)
    np.savez_compressed(tmp_path / "a.npz", features=x)
    chunks = list(read_chunks(DumpPart(tmp_path / "a.npz"), Columns(), 100, start=50))
    assert [c.start for c in chunks] == [50, 150, 250]
    np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), x[50:])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_unit_rows_of_a_dump_are_stored_bit_exact(tmp_path, dtype):
    """Issue 9: rows already unit norm in their dtype are stored as given, the rest scaled."""
    x = unit(np.random.default_rng(3).standard_normal((700, DIM))).astype(dtype)
    x[[5, 650]] *= 2  # two rows far from unit norm, in different chunks
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "a.npy", x)
    import_dump(tmp_path / "d", tmp_path / "s", DumpOptions(shard_rows=300, dtype=dtype,
                                                            progress=False))
    got = Store.open(tmp_path / "s").select(features_dtype=None).features
    keep = ~np.isin(np.arange(700), [5, 650])
    assert got.dtype == np.dtype(dtype)
    assert got[keep].tobytes() == x[keep].tobytes()
    scaled = x[~keep].astype(np.float64)
    np.testing.assert_allclose(got[~keep], scaled / np.linalg.norm(scaled, axis=1,
                                                                   keepdims=True), atol=1e-3)
    assert not np.array_equal(got[~keep], x[~keep])


@pytest.mark.parametrize("direct", [True, False])
def test_npy_chunks_by_file_reads_equal_the_array_fortran_order_too(tmp_path, monkeypatch,
                                                                    direct):
    """Read past the page cache in pieces smaller than a chunk (at offsets not aligned as
    O_DIRECT needs), or plainly where the file system refuses that."""
    monkeypatch.setattr(dump_read.Direct, "PIECE", 2 * dump_read.Direct.BLOCK)
    reads = []
    real = dump_read.Direct.read

    def read(self, at, out):
        reads.append(real(self, at, out) if direct else False)
        return reads[-1]
    monkeypatch.setattr(dump_read.Direct, "read", read)
    x = np.random.default_rng(4).standard_normal((2570, 8)).astype(np.float16)
    for name, arr in (("c.npy", x), ("f.npy", np.asfortranarray(x))):
        np.save(tmp_path / name, arr)
        chunks = list(read_chunks(DumpPart(tmp_path / name), Columns(), 1000, start=30))
        assert [c.start for c in chunks] == [30, 1030, 2030]
        assert all(c.features.flags.c_contiguous for c in chunks)
        np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), x[30:])
    assert reads == [direct] * 3  # (c.npy's chunks; Fortran order is read whole)
    raw = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-40])  # a truncated export
    with pytest.raises(BadInput, match="valid .npy file"):
        list(read_chunks(DumpPart(tmp_path / "t.npy"), Columns(), 100))


def test_lost_journal_write_does_not_duplicate_rows(tmp_path):
    clip_dump(tmp_path / "dump", files=2, rows=300)
    opts = DumpOptions(columns=Columns(ids="image_path"), shard_rows=100, progress=False)
    import_dump(tmp_path / "dump", tmp_path / "s", opts)
    reference = stored(tmp_path / "s")
    journal = json.loads((tmp_path / "s" / JOURNAL).read_text())
    second = sorted(journal["parts"])[1]
    journal["parts"][second].update(rows=200, done=False)  # killed before the last write
    (tmp_path / "s" / JOURNAL).write_text(json.dumps(journal))
    done = import_dump(tmp_path / "dump", tmp_path / "s", opts)
    assert done.skipped == 1 and done.parts == 1 and done.rows == 0  # 200-300 was stored
    rows = stored(tmp_path / "s")
    assert rows.ids.tolist() == reference.ids.tolist()


def test_kill_9_during_import_then_rerun_imports_every_row_once(tmp_path):
    x = clip_dump(tmp_path / "dump", files=4, rows=1500)
    cmd = [*CLI, "import", str(tmp_path / "dump"), "--store", str(tmp_path / "s"),
           "--id-column", "image_path", "--shard-rows", "100", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_shards(proc, tmp_path / "s", 22)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun_completes(cmd, tmp_path / "s", x)


def rerun_completes(cmd: list[str], store: Path, x: np.ndarray) -> None:
    """After a kill mid-import of `clip_dump(files=4, rows=1500)` (features `x`): rerunning
    `cmd` stores every row once, as imported without a kill, and the store verifies."""
    before = len(Store.open(store))
    assert 0 < before < 6000, "the kill should land mid-import"
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = stored(store)
    assert rows.ids.tolist() == [f"imgs/{n}/{i}.jpg" for n in range(4) for i in range(1500)]
    np.testing.assert_allclose(rows.features, unit(x), atol=2e-3)
    Store.open(store).verify()


def test_bad_dumps_exit_2_and_store_nothing(tmp_path):
    clip_dump(tmp_path / "dump", files=1, rows=50)
    pq.write_table(pa.table({"image_path": ["a"] * 49}),
                   tmp_path / "dump" / "metadata" / "metadata_0.parquet")
    res = CliRunner().invoke(main, ["import", str(tmp_path / "dump"), "--store",
                                    str(tmp_path / "s"), "--id-column", "image_path"])
    assert res.exit_code == 2 and "fewer rows" in res.output
    assert not (tmp_path / "s").exists()
    (tmp_path / "v").mkdir()
    emb = pa.array([[0.1, 0.2], [0.3, 0.4, 0.5]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"embedding": emb}), tmp_path / "v" / "a.parquet")
    res = CliRunner().invoke(main, ["import", str(tmp_path / "v" / "a.parquet"), "--store",
                                    str(tmp_path / "s")])
    assert res.exit_code == 2 and "same dimension" in res.output
    assert not (tmp_path / "s").exists()
    res = CliRunner().invoke(main, ["import", str(tmp_path / "dump"), "--store",
                                    str(tmp_path / "s"), "--id-column", "nope"])
    assert res.exit_code == 2 and "no column 'nope'" in res.output


def test_two_dump_imports_creating_one_store_both_land(tmp_path):
    """Both start on a store that does not exist yet (both wait on its writer lock, the lock
    `import` of a file uses): the first creates it and imports, the second then appends."""
    x = {n: np.random.default_rng(k).standard_normal((300, DIM)).astype(np.float32)
         for k, n in enumerate(("a", "b"))}
    for n, arr in x.items():
        (tmp_path / n).mkdir()
        np.save(tmp_path / n / f"{n}.npy", arr)
    store = tmp_path / "s"
    with writer_lock(store, 60):  # a third writer holds the lock until both imports wait on it
        procs = [subprocess.Popen([*CLI, "import", str(tmp_path / n), "--store", str(store),
                                   "--shard-rows", "100"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for n in x]
        wait_until_all_open(procs, store / LOCK_NAME)
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows = stored(store)
    expected = [f"{n}.npy:{i}" for n in x for i in range(300)]
    order = [rows.ids.tolist().index(i) for i in expected]
    assert sorted(rows.ids.tolist()) == sorted(expected)
    np.testing.assert_allclose(rows.features[order], unit(np.concatenate(list(x.values()))),
                               atol=2e-3)
    assert not (store / ".import.lock").exists()
