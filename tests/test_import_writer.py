"""The dump import's writer process (issue 11): the shards it writes are the bytes the
in-process writer writes, its errors are the in-process errors (one line, exit code, nothing
stored), an error in a later chunk comes after the same commits, and a killed import resumes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from procs import wait_for_shards
from test_dumps import DIM, clip_dump, rerun_completes, stored, unit
from test_import_pipeline import COLUMNS, datasets
from test_ingest_errors import cli, error_line, tree

from tipretrieval.errors import BadInput
from tipretrieval.store import dumps, shard_writer, workers
from tipretrieval.store.dump_read import Columns
from tipretrieval.store.dumps import DumpOptions, import_dump
from tipretrieval.store.store import Store

pytestmark = pytest.mark.skipif(not workers.SUPPORTED, reason="no worker processes here")


def count_calls(monkeypatch, cls, name: str) -> list:
    """Record the pid of every call of `cls.name` (in this process)."""
    calls, real = [], getattr(cls, name)

    def spy(self, *args, **kwargs):
        calls.append(os.getpid())
        return real(self, *args, **kwargs)
    monkeypatch.setattr(cls, name, spy)
    return calls


def labelled_dump(root: Path, rows: int = 700) -> None:
    """Two parquet parts whose labels are new in every chunk of 200 (the vocabulary grows
    while the chunk before is still being written) and ids unique across both."""
    root.mkdir()
    rng = np.random.default_rng(7)
    for part, (a, b) in enumerate([(0, 300), (300, rows)]):
        x = rng.standard_normal((b - a, DIM)).astype(np.float32)
        pq.write_table(pa.table({
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM),
            "key": [f"k{i}" for i in range(a, b)],
            "label": [f"class{i // 150}" if i % 7 else None for i in range(a, b)]}),
            root / f"part{part}.parquet", row_group_size=64)


def test_the_writer_process_writes_what_the_in_process_writer_does(tmp_path, monkeypatch):
    labelled_dump(tmp_path / "dump")
    submitted = count_calls(monkeypatch, shard_writer.WriterProcess, "submit")
    in_process = count_calls(monkeypatch, Store, "write")
    columns = Columns("embedding", "key", "label", "key")
    for writer in (True, False):
        done = import_dump(tmp_path / "dump", tmp_path / f"s{writer}", DumpOptions(
            columns=columns, shard_rows=200, progress=False, writer=writer))
        assert done.rows == 700
    assert len(submitted) == 4 and len(in_process) == 4  # (each store: 200+100, 200+200)
    a, b = Store.open(tmp_path / "sTrue"), Store.open(tmp_path / "sFalse")
    assert [datasets(a.path / "shards" / s.name) for s in a.manifest.shards] == \
        [datasets(b.path / "shards" / s.name) for s in b.manifest.shards]
    assert [(a.path / r.name).read_bytes() for r in a.manifest.id_runs] == \
        [(b.path / r.name).read_bytes() for r in b.manifest.id_runs]
    for x in (a, b):
        assert [s.digest for s in x.manifest.shards] == [
            f"xxh3_128:{xxhash.xxh3_128((x.path / 'shards' / s.name).read_bytes()).hexdigest()}"
            for s in x.manifest.shards]
    assert a.classes == b.classes == [f"class{i}" for i in range(5)]
    assert a.generation == b.generation
    got, want = stored(a.path), stored(b.path)
    assert got.ids.tolist() == want.ids.tolist() == [f"k{i}" for i in range(700)]
    assert got.labels.tolist() == want.labels.tolist()
    assert got.labels[[0, 1, 151, 699]].tolist() == [-1, 0, 1, 4]
    np.testing.assert_array_equal(got.features, want.features)
    a.verify()
    assert a.orphans() == []


def test_big_chunks_get_the_writer_process_small_ones_are_written_in_process(tmp_path,
                                                                           monkeypatch):
    clip_dump(tmp_path / "dump", files=2, rows=300)
    submitted = count_calls(monkeypatch, shard_writer.WriterProcess, "submit")
    in_process = count_calls(monkeypatch, shard_writer.InProcess, "submit")
    chunk = 100 * DIM * 2  # float16 features of a chunk of 100 rows
    for limit in (chunk + 1, chunk):
        monkeypatch.setattr(dumps, "WRITER_BYTES", limit)
        import_dump(tmp_path / "dump", tmp_path / f"s{limit}", DumpOptions(
            columns=COLUMNS, shard_rows=100, progress=False))
    assert len(in_process) == 6 and len(submitted) == 6
    assert stored(tmp_path / f"s{chunk}").ids.tolist() == \
        stored(tmp_path / f"s{chunk + 1}").ids.tolist()


def same_text(message: str) -> str:
    """An error message without the random parts of file names (shard and temp names)."""
    return re.sub(r"\d{12}-[0-9a-f]{8}\.h5(\.[^/'\s]+\.tmp)?", "SHARD", message)


def failing_import(tmp_path: Path, monkeypatch, writer: bool, break_it) -> tuple[int, str]:
    """Import a dump into a store holding one earlier import after `break_it(store)`, by the
    CLI, with the writer process or in this process; (exit code, error line) and checks that
    nothing stored changed."""
    monkeypatch.setattr(dumps, "WRITER_BYTES", 1 if writer else 1 << 40)
    store = tmp_path / f"s{writer}"
    clip_dump(tmp_path / f"first{writer}", files=1, rows=50)
    clip_dump(tmp_path / f"dump{writer}", files=2, rows=300, seed=1)
    for dump in ("first", "dump"):  # distinct ids in the second dump
        for meta in (tmp_path / f"{dump}{writer}" / "metadata").iterdir():
            table = pq.read_table(meta)
            pq.write_table(table.set_column(0, "image_path", pa.array(
                [f"{dump}/{p}" for p in table["image_path"].to_pylist()])), meta)
    args = ["--id-column", "image_path", "--shard-rows", "100", "--quiet"]
    assert cli("import", tmp_path / f"first{writer}", "--store", store, *args).exit_code == 0
    before = tree(store)
    with break_it(store):
        res = cli("import", tmp_path / f"dump{writer}", "--store", store, *args)
    assert tree(store) == before
    line = error_line(res, res.exit_code)
    return res.exit_code, same_text(line.replace(str(store), "STORE"))


@contextlib.contextmanager
def shards_not_a_folder(store: Path):
    (store / "shards").rename(store / "kept")
    (store / "shards").write_text("in the way")
    try:
        yield
    finally:
        (store / "shards").unlink()
        (store / "kept").rename(store / "shards")


@contextlib.contextmanager
def full_disk(store: Path):
    """The store's files on a 64 KB tmpfs mounted over its folder (new shards do not fit);
    what is there at the end is copied back to the real folder for the caller's check."""
    files = tree(store)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(store)],
                      capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        for name, data in files.items():
            (store / name).parent.mkdir(exist_ok=True)
            (store / name).write_bytes(data)
        yield
        after = tree(store)
    finally:
        subprocess.run(["umount", str(store)], check=True)
    for p in sorted(store.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    for name, data in after.items():
        (store / name).parent.mkdir(exist_ok=True)
        (store / name).write_bytes(data)


@pytest.mark.parametrize(("fault", "problem", "cause"), [
    (shards_not_a_folder, "I/O error while writing store STORE", "Not a directory"),
    (full_disk, "disk full while writing store STORE", "No space left"),
], ids=["io-error", "full-disk"])
def test_a_write_error_in_the_writer_process_is_the_in_process_error(tmp_path, monkeypatch,
                                                                     fault, problem, cause):
    outcomes = [failing_import(tmp_path, monkeypatch, writer, fault)
                for writer in (True, False)]
    assert outcomes[0] == outcomes[1]
    code, line = outcomes[0]
    assert code == 1 and problem in line
    assert cause in line and "nothing was stored" in line


def test_a_bad_chunk_or_duplicate_is_raised_after_the_same_commits(tmp_path):
    """A NaN row in the second part's second chunk, then a duplicate of an id of the chunk
    being written when it is staged: the chunks before are committed, the error is the same."""
    clip_dump(tmp_path / "dump", files=2, rows=300)
    path = tmp_path / "dump" / "img_emb" / "img_emb_1.npy"
    x = np.load(path)
    x[250, 3] = np.nan
    np.save(path, x)
    meta = tmp_path / "dump" / "metadata" / "metadata_0.parquet"
    table = pq.read_table(meta)
    paths = table["image_path"].to_pylist()
    outcomes = []
    for case in ("nan", "duplicate"):
        if case == "duplicate":  # row 250 repeats row 10 (chunk 200-299 after chunk 0-199)
            pq.write_table(table.set_column(0, "image_path", pa.array(
                paths[:250] + [paths[10]] + paths[251:])), meta)
        for writer in (True, False):
            store = tmp_path / f"{case}{writer}"
            with pytest.raises(BadInput) as exc:
                import_dump(tmp_path / "dump", store, DumpOptions(
                    columns=COLUMNS, shard_rows=200, progress=False, writer=writer))
            outcomes.append((same_text(str(exc.value).replace(str(store), "STORE")),
                             stored(store).ids.tolist()))
            assert Store.open(store).orphans() == []
    assert outcomes[0] == outcomes[1] and outcomes[2] == outcomes[3]
    assert "contain NaN or inf" in outcomes[0][0] and len(outcomes[0][1]) == 500
    assert "already exist" in outcomes[2][0] and len(outcomes[2][1]) == 200


def children(pid: int) -> list[int]:
    """The pids of the processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_of_an_import_with_a_writer_process_then_rerun_imports_every_row_once(
        tmp_path):
    x = clip_dump(tmp_path / "dump", files=4, rows=1500)
    script = ("import sys; from tipretrieval.store.dump_read import Columns; "
              "from tipretrieval.store.dumps import DumpOptions, import_dump; "
              "import_dump(sys.argv[1], sys.argv[2], DumpOptions(columns=Columns("
              "ids='image_path'), shard_rows=100, progress=False, writer=True))")
    cmd = [sys.executable, "-c", script, str(tmp_path / "dump"), str(tmp_path / "s")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_shards(proc, tmp_path / "s", 22)
    writers = children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert writers, "the import should have a writer process"
    deadline = time.monotonic() + 10
    while any(map(alive, writers)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(map(alive, writers)), "the writer process outlived the import"
    rerun_completes(cmd, tmp_path / "s", x)
    assert Store.open(tmp_path / "s").orphans() == []


def test_a_killed_writer_process_is_one_line_and_the_rerun_imports_every_row_once(tmp_path):
    x = clip_dump(tmp_path / "dump", files=4, rows=1500)
    script = ("import sys; from tipretrieval.errors import TipError; "
              "from tipretrieval.store.dump_read import Columns; "
              "from tipretrieval.store.dumps import DumpOptions, import_dump\n"
              "try: import_dump(sys.argv[1], sys.argv[2], DumpOptions(columns=Columns("
              "ids='image_path'), shard_rows=100, progress=False, writer=True))\n"
              "except TipError as exc: sys.exit(f'error: {exc}')")
    cmd = [sys.executable, "-c", script, str(tmp_path / "dump"), str(tmp_path / "s")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    shards = tmp_path / "s" / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            shards.is_dir() and len(list(shards.glob("*.h5"))) >= 10):
        time.sleep(0.02)
    writers = children(proc.pid)
    assert writers, "the import should have a writer process"
    for pid in writers:
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.strip().splitlines() == [
        "error: the import's writer process stopped unexpectedly (killed, or out of memory?): "
        "rerun the import: it continues where it stopped"]
    store = Store.open(tmp_path / "s")
    assert 0 < len(store) < 6000
    store.verify()
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = stored(tmp_path / "s")
    assert rows.ids.tolist() == [f"imgs/{n}/{i}.jpg" for n in range(4) for i in range(1500)]
    np.testing.assert_allclose(rows.features, unit(x), atol=2e-3)
    assert Store.open(tmp_path / "s").orphans() == []
