"""Crash safety and snapshot isolation with a real writer process.

Run as a script (`python test_store_crash.py STORE`), this module is that writer: it appends
batch k, k+1, ... forever, where k follows from the rows already stored.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store.store import Store

ROWS_PER_APPEND = 2000
DIM = 32
CLASSES = ["a", "b", "c"]
PROV = Provenance("ViT-B-32", "openai", DIM)


def batch(k: int) -> Rows:
    """The k-th append of the writer: deterministic, with views and sources on odd k."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((ROWS_PER_APPEND, DIM)).astype(np.float32)
    views = None
    if k % 2:
        views = rng.standard_normal((ROWS_PER_APPEND, 2, DIM)).astype(np.float32)
        views /= np.linalg.norm(views, axis=-1, keepdims=True)
    return Rows.make(
        ids=[f"b{k}-{i}" for i in range(ROWS_PER_APPEND)],
        features=x / np.linalg.norm(x, axis=1, keepdims=True),
        labels=rng.integers(-1, len(CLASSES), ROWS_PER_APPEND), splits=f"split{k % 3}",
        sources=[f"/data/{k}/{i}.png" for i in range(ROWS_PER_APPEND)] if k % 2 else None,
        views=views,
    )


def write_forever(path: str) -> None:
    store = Store.open(path)
    k = len(store) // ROWS_PER_APPEND
    print("go", flush=True)
    while True:
        store.append(batch(k))
        k += 1


def start_writer(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "go\n"
    return proc


def assert_holds_first_batches(store: Store, with_views: bool = True) -> int:
    """Check the store holds exactly batches 0..k-1 (every field); return k."""
    k, rest = divmod(len(store), ROWS_PER_APPEND)
    assert rest == 0, f"{len(store)} rows is not a whole number of appends"
    got = list(store.iter_rows(ROWS_PER_APPEND, with_views=with_views))
    assert len(got) == k
    for i, rows in enumerate(got):
        want = batch(i)
        np.testing.assert_array_equal(rows.ids, want.ids)
        first = i * ROWS_PER_APPEND
        np.testing.assert_array_equal(rows.row_ids, np.arange(first, first + ROWS_PER_APPEND))
        np.testing.assert_array_equal(rows.labels, want.labels)
        np.testing.assert_array_equal(rows.splits, want.splits)
        np.testing.assert_array_equal(rows.features, want.features.astype(np.float16))
        if with_views:
            assert (rows.sources is None) == (want.sources is None)
            if want.views is not None:
                np.testing.assert_array_equal(rows.views, want.views.astype(np.float16))
                np.testing.assert_array_equal(rows.sources, want.sources)
    return k


def test_writer_killed_at_random_points_leaves_old_or_new_contents(tmp_path):
    path = tmp_path / "store"
    Store.create(path, dim=DIM, provenance=PROV, classes=CLASSES)
    rng = random.Random(0)
    counts = []
    for _ in range(20):
        writer = start_writer(path)
        time.sleep(rng.uniform(0.0, 0.15))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        store = Store.open(path)
        store.verify()
        counts.append(assert_holds_first_batches(store, with_views=False))
    assert counts == sorted(counts) and counts[-1] > counts[0], counts
    assert_holds_first_batches(Store.open(path))


def test_reader_sees_one_snapshot_during_concurrent_appends(tmp_path):
    path = tmp_path / "store"
    store = Store.create(path, dim=DIM, provenance=PROV, classes=CLASSES)
    for k in range(3):
        store.append(batch(k))
    reader = Store.open(path)
    writer = start_writer(path)
    try:
        seen = []
        for rows in reader.iter_rows(500):
            seen.append(rows)
            time.sleep(0.02)
        assert Store.open(path).generation > reader.generation  # appends happened meanwhile
    finally:
        writer.kill()
        writer.wait()
    joined = Rows.concat(seen)
    want = Rows.concat([batch(k) for k in range(3)])
    np.testing.assert_array_equal(joined.ids, want.ids)
    np.testing.assert_array_equal(joined.features, want.features.astype(np.float16))
    assert len(reader) == 3 * ROWS_PER_APPEND
    assert assert_holds_first_batches(reader.refresh()) > 3


if __name__ == "__main__":
    write_forever(sys.argv[1])
