"""Reading a store with worker processes: the same batches as in-process, bit for bit; worker
errors as the same one-line TipError; no process or shared memory left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import psutil
import pytest
from random_rows import random_rows

from tipretrieval.errors import BadInput, CorruptData, TipError
from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store import reader, workers
from tipretrieval.store.store import Store

DIM = 16
CLASSES = ["ant", "bee", "cat"]
FIELDS = ("ids", "features", "labels", "splits", "sources", "views", "row_ids")
READY = workers.Pool.ready
pytestmark = pytest.mark.skipif(not workers.SUPPORTED, reason="no memfd_create here")


def make_rows(n: int, seed: int, views: int = 0, sources: bool = False) -> Rows:
    return random_rows(n, seed, dim=DIM, classes=len(CLASSES), prefix="s", views=views,
                       sources=sources)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Four shards of odd sizes (one with views and sources) so batches cross shards."""
    store = Store.create(tmp_path_factory.mktemp("w") / "s", dim=DIM,
                         provenance=Provenance("ViT-B-32", "openai", DIM), classes=CLASSES)
    for seed, (n, views, sources) in enumerate([(700, 0, False), (1300, 2, True),
                                                (450, 0, False), (900, 0, True)]):
        store.append(make_rows(n, seed, views, sources))
    return store


@pytest.fixture
def submitted(monkeypatch) -> list:
    """Every batch goes to a worker with a free slot (none is read in-process while they start
    or while the oldest is being filled); returns the list of the batches submitted to them."""
    sent = []
    submit = workers.Pool.submit
    monkeypatch.setattr(workers.Pool, "ready", lambda self: True)
    monkeypatch.setattr(workers.Pool, "done", lambda self: True)
    monkeypatch.setattr(workers.Pool, "submit", lambda self, task, slot: (sent.append(task),
                                                                           submit(self, task,
                                                                                  slot)))
    return sent


def copied(batches) -> list[Rows]:
    """Copies of the batches, each dropped before the next is read (as a streaming consumer
    does), so the workers' slots are free again for the next batches."""
    return [Rows(**{f: None if getattr(r, f) is None else getattr(r, f).copy() for f in FIELDS})
            for r in batches]


def assert_same(a: list[Rows], b: list[Rows]) -> None:
    assert [len(x) for x in a] == [len(y) for y in b]
    for x, y in zip(a, b, strict=True):
        for name in FIELDS:
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None) == (v is None), name
            if u is not None:
                assert u.dtype == v.dtype and np.array_equal(u, v), name


def children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


READS = [
    {},
    {"columns": ("features", "row_ids"), "features_dtype": None},
    {"split": "val", "features_dtype": "float16"},
    {"labels": [0, 2], "with_views": True},
    {"split": "train", "labels": -1, "columns": ("features", "ids", "sources")},
    {"row_ids": np.r_[5:40, 690:720, 1999:2600], "with_views": True},
    {"ids": [f"s1-{i}" for i in range(0, 1300, 7)] + ["s3-5", "missing"]},
]


@pytest.mark.parametrize("kwargs", READS, ids=lambda k: ",".join(k) or "default")
def test_workers_read_the_same_batches_as_in_process(store, submitted, kwargs):
    here = list(store.iter_rows(128, workers=0, **kwargs))
    assert len(here) > 3 and len(here[-1]) < 128 or "ids" in kwargs  # partial batches too
    assert not submitted
    there = copied(store.iter_rows(128, workers=2, **kwargs))
    assert len(submitted) == len(there)  # every batch was filled by a worker
    assert_same(here, there)
    assert np.array_equal(np.concatenate([r.features for r in there]),
                          store.select(**kwargs).features)
    assert not children()


def test_batches_kept_by_the_consumer_keep_their_slots_until_they_are_garbage(store,
                                                                               submitted):
    """Batches are views of the workers' shared slots: a slot is filled again only once no
    array made from its batch is left (all kept: the rest is read here; a slice kept: its
    slot stays out of use)."""
    here = list(store.iter_rows(64, workers=0))
    kept = list(store.iter_rows(64, workers=2))  # every batch held at once
    slots = 2 * reader.SLOTS_PER_WORKER
    assert len(submitted) == slots < len(kept)
    assert_same(here, kept)
    assert all(isinstance(r.features.base, np.ndarray) for r in kept[:slots])  # no copies
    del kept
    submitted.clear()
    heads = [rows.features[:3] for rows in store.iter_rows(64, workers=2)]
    assert len(submitted) == slots
    assert all(np.array_equal(h, r.features[:3]) for h, r in zip(heads, here, strict=True))


def test_the_consumer_reads_ahead_while_the_oldest_batch_is_being_filled(store, submitted,
                                                                          monkeypatch):
    monkeypatch.setattr(workers.Pool, "done", lambda self: False)
    here = list(store.iter_rows(64, workers=0))
    there = copied(store.iter_rows(64, workers=1))
    assert_same(here, there)
    assert 0 < len(submitted) < len(here)  # some by the worker, the others read here meanwhile
    assert not children()


def test_batches_read_while_the_workers_start_keep_their_order(store, submitted,
                                                              monkeypatch):
    calls = iter(range(10 ** 6))
    monkeypatch.setattr(workers.Pool, "ready", lambda self: next(calls) >= 5)
    here = list(store.iter_rows(64, workers=0))
    assert_same(here, copied(store.iter_rows(64, workers=3)))
    assert 0 < len(here) - len(submitted) <= 5  # read here first, then the workers took over
    monkeypatch.setattr(workers.Pool, "ready", READY)  # as it is: read here until they start
    assert_same(here, list(store.iter_rows(64, workers=3)))
    assert not children()


def test_a_damaged_chunk_read_by_a_worker_is_the_same_one_line_corrupt_data(
        store, submitted, tmp_path):
    copy = Store.open(_copy(store, tmp_path))
    path = copy.path / "shards" / copy.manifest.shards[2].name
    with h5py.File(path, "r") as f:
        chunk = f["features"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[chunk.byte_offset + chunk.size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    fast = {"columns": ("features", "row_ids"), "features_dtype": None}
    with pytest.raises(CorruptData) as here:
        list(copy.iter_rows(256, workers=0, **fast))
    got = []
    with pytest.raises(CorruptData) as there:
        for rows in copy.iter_rows(256, workers=2, **fast):
            got.append(len(rows))
    assert str(there.value) == str(here.value) and "\n" not in str(there.value)
    assert "xxh3_64 checksum" in str(there.value) and path.name in str(there.value)
    assert sum(got) == 2000 // 256 * 256  # every batch before the one reaching shard 2
    assert submitted and not children()


def test_a_missing_shard_found_by_a_worker_is_the_same_error(store, submitted, tmp_path):
    copy = Store.open(_copy(store, tmp_path))
    (copy.path / "shards" / copy.manifest.shards[3].name).unlink()
    with pytest.raises(CorruptData) as here:
        list(copy.iter_rows(256, workers=0, columns="features"))
    with pytest.raises(CorruptData) as there:
        list(copy.iter_rows(256, workers=2, columns="features"))
    assert str(there.value) == str(here.value) and "is missing" in str(there.value)
    assert not children()


def test_stopping_early_or_raising_leaves_no_process_and_no_shared_memory(store, submitted):
    shm = set(os.listdir("/dev/shm"))
    it = store.iter_rows(64, workers=2)
    next(it)
    assert len(children()) == 2
    it.close()
    assert not children()
    with pytest.raises(KeyError):
        for rows in store.iter_rows(64, workers=2):
            {}[rows.ids[0]]
    assert not children() and set(os.listdir("/dev/shm")) == shm


def test_a_worker_that_dies_is_a_one_line_error_not_a_hang(store, submitted):
    it = store.iter_rows(64, workers=2)
    next(it)
    children()[1].kill()
    with pytest.raises(TipError, match="worker process stopped unexpectedly: rerun with `w"):
        copied(it)
    assert not children()


def test_how_many_workers_a_read_gets(store, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    slot = 8192 * 1024
    big = reader.PARALLEL_BYTES // 1024
    assert reader.worker_count(None, big, 8192, slot, 1024) == 5  # one per CPU but one
    assert reader.worker_count(None, big - 1, 8192, slot, 1024) == 0  # small: in-process
    assert reader.worker_count(3, 1000, 100, 100, 1) == 3  # asked for: even when small
    assert reader.worker_count(5, 1000, 400, 400, 1) == 3  # at most one per batch
    assert reader.worker_count(5, 1000, 1000, 1000, 1) == 0  # never for one batch
    assert reader.worker_count(0, big, 8192, slot, 1024) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert reader.worker_count(None, 10 * big, 8192, slot, 1024) == 0  # two CPUs: in-process
    ring = reader.RING_BYTES // (reader.SLOTS_PER_WORKER * slot)
    assert reader.worker_count(64, 10 * big, 8192, slot, 1024) == ring
    with pytest.raises(BadInput, match="workers=-1 is negative"):
        store.iter_rows(workers=-1)


def _copy(store: Store, tmp_path) -> str:
    return shutil.copytree(store.path, tmp_path / "copy")


def test_workers_of_a_killed_consumer_exit(store):
    script = (
        "import os, sys, psutil\n"
        "from tipretrieval.store import workers\n"
        "from tipretrieval.store.store import Store\n"
        "workers.Pool.ready = lambda self: True\n"
        "it = Store.open(sys.argv[1]).iter_rows(64, workers=2)\n"
        "next(it)\n"
        "print(*[p.pid for p in psutil.Process().children(recursive=True)], flush=True)\n"
        "os.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, "-c", script, str(store.path)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": workers._ROOT})
    assert out.returncode == -9, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids):  # each sees its connection close and exits
        assert time.monotonic() < deadline, pids
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
