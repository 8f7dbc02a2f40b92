"""`tipretrieval import` under concurrency, full disks, odd encodings and odd files: one-line
errors with the right exit code, nothing stored changed, and features kept exactly as given."""

from __future__ import annotations

import errno
import os
import threading
import time
import warnings
from pathlib import Path
from tokenize import TokenError

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tipretrieval.cli import main
from tipretrieval.errors import BadInput
from tipretrieval.store import lock, normalise
from tipretrieval.store import shard as shard_mod
from tipretrieval.store.ingest import ImportOptions, import_features
from tipretrieval.store.store import Store
from tipretrieval.store.validate import NORM_TOLERANCE

DIM = 8


def unit(n: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def npz(path: Path, n: int = 10, seed: int = 0, **arrays) -> Path:
    np.savez(path, **{"features": unit(n, seed),
                      "ids": np.array([f"{path.stem}{i}" for i in range(n)]), **arrays})
    return path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(res, code: int) -> str:
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()} if path.exists() else {}


def test_a_failed_import_never_removes_rows_another_import_committed(tmp_path, monkeypatch):
    """Audit 1: A creates the store and fails late; B imports meanwhile and must keep its rows."""
    path = tmp_path / "new"
    in_append = threading.Event()
    real = Store.append

    def slow(self, rows, **kw):
        if len(rows) == 1000:  # import A: fails in append (a duplicate id), after a pause
            in_append.set()
            time.sleep(1.0)
        return real(self, rows, **kw)
    monkeypatch.setattr(Store, "append", slow)
    ids = np.array([f"a{i}" for i in range(999)] + ["a0"])
    errors = []

    def run_a():
        try:
            import_features(npz(tmp_path / "a.npz", 1000, ids=ids), path)
        except BadInput as exc:
            errors.append(exc)
    a = threading.Thread(target=run_a)
    a.start()
    assert in_append.wait(10)
    result = import_features(npz(tmp_path / "b.npz", 50, 1), path)
    a.join()
    assert len(errors) == 1 and "more than once" in str(errors[0])
    store = Store.open(path)
    assert len(store) == 50 and len(result.row_ids) == 50
    np.testing.assert_array_equal(store.select().ids, [f"b{i}" for i in range(50)])


def test_two_imports_creating_one_store_both_land(tmp_path):
    """Audit 13: the second waits for the lock and appends instead of 'is already a store'."""
    path = tmp_path / "new"
    path.mkdir()
    results = {}
    with lock.writer_lock(path, 10):  # both start while a third writer holds the lock
        threads = [threading.Thread(target=lambda n=n: results.update(
            {n: cli("import", npz(tmp_path / f"{n}.npz", 20, len(n)), "--store", path)}))
            for n in ("x", "yy")]
        for t in threads:
            t.start()
        time.sleep(0.5)
    for t in threads:
        t.join()
    for res in results.values():
        assert res.exit_code == 0, res.output
    assert sorted(Store.open(path).select().ids) == sorted(
        [f"x{i}" for i in range(20)] + [f"yy{i}" for i in range(20)])


def test_class_names_made_of_digits_are_matched_as_names(tmp_path):
    """Audit 4: classes 2,0,1 with labels given as names '0','0','1','2'."""
    (tmp_path / "classes.txt").write_text("2\n0\n1\n")
    (tmp_path / "labels.txt").write_text("0\n0\n1\n2\n")
    np.save(tmp_path / "f.npy", unit(4))
    res = cli("import", tmp_path / "f.npy", "--store", tmp_path / "s", "--classes",
              tmp_path / "classes.txt", "--labels", tmp_path / "labels.txt")
    assert res.exit_code == 0, res.output
    store = Store.open(tmp_path / "s")
    assert store.classes == ["2", "0", "1"]
    np.testing.assert_array_equal(store.select().labels, [1, 1, 2, 0])
    (tmp_path / "labels2.txt").write_text("0\n5\n1\n2\n")  # a name mixed with a non-name
    np.save(tmp_path / "g.npy", unit(4, 1))
    line = error_line(cli("import", tmp_path / "g.npy", "--store", tmp_path / "s", "--labels",
                          tmp_path / "labels2.txt"), 2)
    assert "'5'" in line
    (tmp_path / "idx.txt").write_text("0\n2\n-1\n1\n")  # no class names: indices
    res = cli("import", tmp_path / "g.npy", "--store", tmp_path / "t", "--classes",
              _letters(tmp_path), "--labels", tmp_path / "idx.txt")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(Store.open(tmp_path / "t").select().labels, [0, 2, -1, 1])


def _letters(tmp_path: Path) -> Path:
    (tmp_path / "letters.txt").write_text("a\nb\nc\n")
    return tmp_path / "letters.txt"


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_is_one_line_exit_1_and_leaves_nothing(tmp_path, monkeypatch):
    """Audit 11: ENOSPC half-way through writing the shard file (simulated; a real 3 MB tmpfs
    behaves the same, see the report; a real full disk fails the block reservation first,
    see test_import_pipeline)."""
    real = shard_mod._write_file

    def filling(tmp, columns, image):
        real(tmp, columns, image)
        os.truncate(tmp, tmp.stat().st_size // 2)
        _full()
    assert cli("import", npz(tmp_path / "b.npz"), "--store", tmp_path / "s").exit_code == 0
    before = tree(tmp_path / "s")
    monkeypatch.setattr(shard_mod, "_write_file", filling)
    line = error_line(cli("import", npz(tmp_path / "a.npz"), "--store", tmp_path / "new"), 1)
    assert "disk full while writing store" in line and "No space left" in line
    assert not (tmp_path / "new").exists()
    error_line(cli("import", npz(tmp_path / "c.npz"), "--store", tmp_path / "s"), 1)
    assert tree(tmp_path / "s") == before  # the temporary shard is gone too


def test_a_full_disk_while_replacing_the_manifest_leaves_the_store_as_it_was(tmp_path,
                                                                           monkeypatch):
    assert cli("import", npz(tmp_path / "b.npz"), "--store", tmp_path / "s").exit_code == 0
    before = tree(tmp_path / "s")
    monkeypatch.setattr("tipretrieval.util.jsonfile.write_text", _full)
    error_line(cli("import", npz(tmp_path / "c.npz"), "--store", tmp_path / "s"), 1)
    assert tree(tmp_path / "s") == before


def test_permission_denied_is_one_line_exit_2(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(lock.os, "open", denied)
    line = error_line(cli("import", npz(tmp_path / "a.npz"), "--store", tmp_path / "s"), 2)
    assert "cannot write to store" in line and "Permission denied" in line


def test_ids_that_are_not_utf8_or_not_unicode_are_one_line_errors(tmp_path):
    np.save(tmp_path / "f.npy", unit(2))
    (tmp_path / "ids.txt").write_bytes("caf\xe9\nna\xefve\n".encode("latin-1"))
    line = error_line(cli("import", tmp_path / "f.npy", "--store", tmp_path / "s", "--ids",
                          tmp_path / "ids.txt"), 2)
    assert "--ids file" in line and "not UTF-8" in line
    bad_bytes = npz(tmp_path / "b.npz", 2, ids=np.array([b"caf\xe9", b"ok"]))
    assert "ids in" in error_line(cli("import", bad_bytes, "--store", tmp_path / "s"), 2)
    surrogate = npz(tmp_path / "c.npz", 2, ids=np.array(["a\udc80", "b"]))
    assert "not valid Unicode" in error_line(cli("import", surrogate, "--store",
                                                 tmp_path / "s"), 2)
    assert not (tmp_path / "s").exists()


def test_odd_source_files_get_messages_that_name_the_problem(tmp_path):
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("features")
    assert "is an HDF5 group, not an array" in error_line(
        cli("import", tmp_path / "g.h5", "--store", tmp_path / "s"), 2)
    (tmp_path / "t.npy").write_text("1 2 3\n4 5 6\n")
    assert "is not a .npy file" in error_line(
        cli("import", tmp_path / "t.npy", "--store", tmp_path / "s"), 2)
    (tmp_path / "e.pt").write_bytes(b"")
    assert "is empty" in error_line(cli("import", tmp_path / "e.pt", "--store",
                                        tmp_path / "s"), 2)
    torch.save({"features": torch.zeros(2)}, tmp_path / "x.pt")
    data = (tmp_path / "x.pt").read_bytes()
    (tmp_path / "x.pt").write_bytes(data[:len(data) // 2])
    line = error_line(cli("import", tmp_path / "x.pt", "--store", tmp_path / "s"), 2)
    assert "()" not in line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("at, bit, raised", [(10, 0, TokenError), (21, 4, SyntaxError)])
def test_a_npy_header_numpy_cannot_tokenize_is_one_line_exit_2(tmp_path, at, bit, raised):
    """numpy parses a .npy header with Python's tokenizer: a flipped bit there raises
    TokenError or SyntaxError, which a single-file and a dump import both report in one line."""
    np.save(tmp_path / "a.npy", unit(9))
    data = bytearray((tmp_path / "a.npy").read_bytes())
    data[at] ^= 1 << bit
    (tmp_path / "dump").mkdir()
    (tmp_path / "dump" / "a.npy").write_bytes(bytes(data))
    with pytest.raises(raised):  # (what the flip does to numpy)
        np.load(tmp_path / "dump" / "a.npy")
    for source in (tmp_path / "dump" / "a.npy", tmp_path / "dump"):
        line = error_line(cli("import", source, "--store", tmp_path / "s"), 2)
        assert "cannot read" in line and "check that it is a valid .npy file" in line
        assert not (tmp_path / "s").exists()


def test_same_basename_without_ids_names_the_fix(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "f.npy", unit(3))
    np.save(tmp_path / "b" / "f.npy", unit(3, 1))
    assert cli("import", tmp_path / "a" / "f.npy", "--store", tmp_path / "s").exit_code == 0
    line = error_line(cli("import", tmp_path / "b" / "f.npy", "--store", tmp_path / "s"), 2)
    assert "ids default to 'f.npy:ROW'" in line and "give ids with --ids or an 'ids' array" in line


def test_float64_beyond_float32_is_normalised_without_warnings(tmp_path):
    x = unit(4, 0, np.float64) * 1e39
    np.save(tmp_path / "big.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cli("import", tmp_path / "big.npy", "--store", tmp_path / "s")
        assert res.exit_code == 0, res.output
        line = error_line(cli("import", tmp_path / "big.npy", "--store", tmp_path / "t",
                              "--require-normalized"), 2)
    assert "not L2-normalised" in line and "NaN" not in line
    np.testing.assert_allclose(Store.open(tmp_path / "s").select().features,
                               x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-3)


def test_unit_norm_features_are_kept_bit_exact(tmp_path):
    """Issue 9 item 2: only rows that are not normalised are rescaled."""
    for dtype in ("float16", "float32"):
        x = unit(50, 3, dtype)
        x[7] *= 3  # one row far from unit norm
        np.save(tmp_path / f"{dtype}.npy", x)
        res = cli("import", tmp_path / f"{dtype}.npy", "--store", tmp_path / dtype,
                  "--dtype", dtype)
        assert res.exit_code == 0, res.output
        got = Store.open(tmp_path / dtype).select(features_dtype=None).features
        keep = np.arange(50) != 7
        assert got.dtype == np.dtype(dtype)
        assert got[keep].tobytes() == x[keep].tobytes()
        assert got[7].tobytes() != x[7].tobytes()
        np.testing.assert_allclose(np.linalg.norm(got[7].astype(np.float64)), 1, atol=2e-3)


def test_no_lock_file_is_left_in_a_directory_that_was_refused_or_emptied(tmp_path):
    """Audit 23."""
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "is not empty" in error_line(cli("import", npz(tmp_path / "a.npz"), "--store",
                                            busy), 2)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = npz(tmp_path / "bad.npz", ids=np.array(["d"] * 10))
    error_line(cli("import", bad, "--store", empty), 2)
    assert empty.is_dir() and not any(empty.iterdir())


def test_empty_split_is_refused(tmp_path):
    """Audit 25."""
    line = error_line(cli("import", npz(tmp_path / "a.npz"), "--store", tmp_path / "s",
                          "--split", ""), 2)
    assert "--split is empty" in line
    with pytest.raises(BadInput, match="split '' is empty"):
        import_features(npz(tmp_path / "b.npz", split=np.array([""] * 10)), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_info_stats_every_shard_and_lists_orphans(tmp_path):
    """Audit 24 and 23: a missing or truncated shard without --verify; orphans shown."""
    assert cli("import", npz(tmp_path / "a.npz"), "--store", tmp_path / "s").exit_code == 0
    orphan = tmp_path / "s" / "shards" / "000000000010-0badf00d.h5"
    orphan.write_bytes(b"x" * 1000)
    res = cli("info", tmp_path / "s")
    assert res.exit_code == 0 and "orphans     1 files" in res.stdout and orphan.name in \
        res.stdout
    shard = next(p for p in (tmp_path / "s" / "shards").iterdir() if p != orphan)
    with open(shard, "r+b") as f:
        f.truncate(100)
    assert "is truncated" in error_line(cli("info", tmp_path / "s"), 2)
    shard.unlink()
    assert "is missing" in error_line(cli("info", tmp_path / "s"), 2)


def test_import_options_without_cli_use_the_same_rules(tmp_path):
    opts = ImportOptions(labels=["0", "1"], classes=["1", "0"])
    np.save(tmp_path / "f.npy", unit(2))
    res = import_features(tmp_path / "f.npy", tmp_path / "s", opts)
    np.testing.assert_array_equal(res.store.select().labels, [1, 0])
    assert normalise.UNIT_TOLERANCE[2] < NORM_TOLERANCE  # kept rows pass the store's norm check
