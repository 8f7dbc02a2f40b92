"""Benchmark the feature store: append N x D rows, then stream them back cold and warm.

Each read runs in a fresh child process so its peak RSS (VmHWM) can be compared with that
process's RSS after imports and opening the store (the baseline). Like is compared with like:
the Store's fastest option (features as stored, plus row ids) with raw h5py reading the
`features` dataset alone (the I/O floor), and the Store's default `Rows` (ids, labels, splits,
row ids, float32 features) with raw h5py reading and decoding the same columns by hand
(features cast with numpy's astype); raw h5py reading the features of the store's own shards
shows what HDF5's fletcher32 check costs by itself. The raw reads use copies of the shards
written without checksums (same datasets and chunks, no fletcher32 filter), so the ratios
include the cost of the store's integrity checks (each features chunk's xxh3_64 for the shards
that keep one, fletcher32 on every other chunk, finite/non-zero features, label range). Before
every cold read the store shards and the raw copies are evicted from the page cache (fsync,
then posix_fadvise(DONTNEED) on each file; the system-wide cache is left alone for other
users), before every warm read both are read once; `fincore` checks how much of them is cached
at the start of each run. Every read is repeated (`--repeat`, kinds interleaved) and its
fastest run is reported, with the highest peak RSS of its runs, so a busy shared machine skews
every kind alike; each kind's least CPU time is shown too, as it is less disturbed by other
users than wall time, with the share of it spent in the Store reader's worker processes
(`iter_rows(workers=)`, set with `--workers`; automatic by default: in-process on two CPUs or
fewer), reaped before the child reports.

`--appends N` instead measures what one small append costs as shards accumulate: N appends of
`--append-rows` rows to a new store (or to one first filled with `--base-rows` rows, in appends
of a million), each through a freshly opened `Store` (as a command does: the id index is read
and checked), timing the first and the last ten.

    python tools/bench_store.py [--rows 1000000] [--dim 512] [--dtype float16|float32]
                                [--repeat 3] [--workers N]
    python tools/bench_store.py --appends 600 [--append-rows 20]
    python tools/bench_store.py --appends 10 --base-rows 10000000 --dim 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from page_cache import drop_cache, resident, warm_cache

from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store.manifest import DTYPES
from tipretrieval.store.store import SHARD_DIR, Store
from tipretrieval.util.progress import progress

APPEND_ROWS = 100_000
KINDS = (("raw", "raw h5py, features only (as stored)"),
         ("raw-sum", "raw h5py, features only, on the store's shards (fletcher32 checked)"),
         ("fast", "Store.iter_rows(columns=(features, row_ids), features_dtype=None)"),
         ("raw-same", "raw h5py, the default's columns (ids, labels, splits, row ids; float32)"),
         ("store", "Store.iter_rows() default (all columns; float32)"))
PAIRS = (("fast", "raw"), ("store", "raw-same"), ("store", "raw"),  # (store kind, raw kind)
         ("raw-sum", "raw"), ("fast", "raw-sum"))
FAST = {"columns": ("features", "row_ids"), "features_dtype": None}


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS now, VmHWM peak of this process image) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _raw_ids(f: h5py.File, s: int, stop: int) -> np.ndarray:
    """Ids of rows s:stop decoded by hand from the variable-length layout (ids_utf8/ids_end)."""
    ends = f["ids_end"][max(s - 1, 0):stop]
    base = int(ends[0]) if s else 0
    ends = ends[1:] if s else ends
    data = f["ids_utf8"][base:int(ends[-1])].tobytes()
    bounds = np.concatenate(([0], ends - base)).tolist()
    return np.array([data[a:b].decode() for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                    dtype=object)


def without_checksums(shards: list[Path], out: Path) -> list[Path]:
    """Copies of `shards` with the same datasets and chunks but no fletcher32 (the raw floor)."""
    out.mkdir()
    copies = []
    for shard in shards:
        copy = out / shard.name
        with h5py.File(shard, "r") as src, h5py.File(copy, "w") as dst:
            for name, ds in src.items():
                dst.create_dataset(name, data=ds[()], chunks=ds.chunks, dtype=ds.dtype)
        copies.append(copy)
    return copies


def child_read(kind: str, path: str, batch: int, raw_dir: str | None,
               workers: int | None) -> dict:
    """Stream the whole store once (in this fresh process); time it and measure peak RSS."""
    store = Store.open(path)
    folder = Path(path) / SHARD_DIR if kind == "raw-sum" else Path(raw_dir)
    shards = [folder / s.name for s in store.manifest.shards]
    baseline = _status_mb("VmRSS")
    start, cpu, rows = time.perf_counter(), time.process_time(), 0
    if kind.startswith("raw"):
        for shard, info in zip(shards, store.manifest.shards, strict=True):
            with h5py.File(shard, "r") as f:
                ds = f["features"]
                names = np.array([b.decode() for b in f["split_names"][()]], dtype=object)
                for s in range(0, ds.shape[0], batch):
                    x = ds[s:s + batch]
                    rows += len(x)
                    if kind == "raw-same":  # what a hand-written reader of the same Rows does
                        x.astype(np.float32)
                        _raw_ids(f, s, s + len(x))
                        f["labels"][s:s + batch]
                        names[f["splits"][s:s + batch]]
                        np.arange(s, s + len(x), dtype=np.int64) + info.first_row_id
    else:
        for part in store.iter_rows(batch, workers=workers, **(FAST if kind == "fast" else {})):
            rows += len(part)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    workers_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])  # reaped workers
    return {"seconds": seconds, "cpu": cpu + workers_cpu, "workers_cpu": workers_cpu,
            "rows": rows,
            "peak_above_baseline_mb": _status_mb("VmHWM") - baseline, "baseline_mb": baseline}


def write(path: Path, n: int, dim: int, dtype: str) -> float:
    """Append `n` random unit rows in parts of APPEND_ROWS; returns seconds spent appending."""
    store = Store.create(path, dim=dim, provenance=Provenance("bench", "random", dim),
                         dtype=dtype)
    rng = np.random.default_rng(0)
    spent = 0.0
    with progress(n, "write") as bar:
        for first in range(0, n, APPEND_ROWS):
            m = min(APPEND_ROWS, n - first)
            x = rng.standard_normal((m, dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            rows = Rows.make([f"img/{i:09d}.jpg" for i in range(first, first + m)], x)
            t = time.perf_counter()
            store.append(rows)
            spent += time.perf_counter() - t
            bar.update(m)
    return spent


def run_child(kind: str, path: Path, batch: int, raw_dir: Path, workers: int | None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--store", str(path), "--batch", str(batch),
         "--raw-dir", str(raw_dir), *([] if workers is None else ["--workers", str(workers)])],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def _batch(rng: np.random.Generator, name: str, rows: int, dim: int) -> Rows:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    return Rows.make([f"{name}/{i}" for i in range(rows)],
                     x / np.linalg.norm(x, axis=1, keepdims=True))


def bench_appends(n: int, rows: int, dim: int, root: Path | None, base: int = 0) -> None:
    """Time `n` appends of `rows` rows each to a new store (first filled with `base` rows):
    does the cost grow with shards, or with the rows stored?"""
    rng = np.random.default_rng(0)
    times = []
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        path = Path(tmp) / "store"
        store = Store.create(path, dim=dim, provenance=Provenance("bench", "random", dim))
        for k, a in enumerate(range(0, base, 1_000_000)):
            store.append(_batch(rng, f"base{k}", min(1_000_000, base - a), dim))
        for k in range(n):
            batch = _batch(rng, f"a{k}", rows, dim)
            t = time.perf_counter()
            Store.open(path).append(batch)
            times.append(time.perf_counter() - t)
    first, last = np.median(times[:10]) * 1e3, np.median(times[-10:]) * 1e3
    print(f"{n} appends of {rows} rows x {dim} to a store of {base:,} rows: median of the first "
          f"10 {first:.1f} ms, of the last 10 {last:.1f} ms per append ({last / first:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--dtype", choices=DTYPES, default="float16", help="on-disk dtype")
    ap.add_argument("--repeat", type=int, default=3, help="runs per read (fastest is shown)")
    ap.add_argument("--workers", type=int,
                    help="worker processes of the Store reads [automatic: one per CPU]")
    ap.add_argument("--dir", type=Path, help="where to put the store [a temporary directory]")
    ap.add_argument("--appends", type=int, default=0,
                    help="instead: time this many small appends to a new store")
    ap.add_argument("--append-rows", type=int, default=20)
    ap.add_argument("--base-rows", type=int, default=0,
                    help="with --appends: rows to fill the store with first")
    ap.add_argument("--child", choices=[k for k, _ in KINDS], help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--raw-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_read(args.child, args.store, args.batch, args.raw_dir,
                                    args.workers)))
        return
    if args.appends:
        bench_appends(args.appends, args.append_rows, args.dim, args.dir, args.base_rows)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "store"
        write_s = write(path, args.rows, args.dim, args.dtype)
        store = Store.open(path)
        shards = [path / SHARD_DIR / s.name for s in store.manifest.shards]
        raw = without_checksums(shards, Path(tmp) / "raw")
        mb = args.rows * args.dim * np.dtype(args.dtype).itemsize / 1e6
        seconds: dict[tuple[str, str], float] = {}
        peaks: dict[tuple[str, str], float] = {}
        cpus: dict[tuple[str, str], float] = {}
        in_workers: dict[tuple[str, str], float] = {}  # of the CPU time, the workers' share
        cached = {"cold": [], "warm": []}  # page-cache residency at the start of each run
        for _ in range(args.repeat):
            for temp in ("cold", "warm"):
                for kind, _label in KINDS:
                    (drop_cache if temp == "cold" else warm_cache)(shards + raw)
                    cached[temp].append(resident(shards + raw))
                    res = run_child(kind, path, args.batch, Path(tmp) / "raw", args.workers)
                    assert res["rows"] == args.rows, res
                    key = (temp, kind)
                    seconds[key] = min(seconds.get(key, float("inf")), res["seconds"])
                    if res["cpu"] < cpus.get(key, float("inf")):
                        cpus[key], in_workers[key] = res["cpu"], res["workers_cpu"]
                    peaks[key] = max(peaks.get(key, 0.0), res["peak_above_baseline_mb"])
    table = [("write (Store.append)", write_s, None, None, 0.0)]
    table += [(f"{temp} read: {label}", seconds[temp, kind], cpus[temp, kind], peaks[temp, kind],
               in_workers[temp, kind]) for temp in ("cold", "warm") for kind, label in KINDS]
    print(f"{args.rows:,} rows x {args.dim} {args.dtype} ({mb:,.0f} MB of features), batch "
          f"{args.batch}, {len(shards)} shards; best of {args.repeat} runs; Store reads with "
          f"workers={args.workers} on {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    for temp, what in (("cold", "evicted: fsync + fadvise(DONTNEED)"), ("warm", "read once")):
        fractions = [f for f in cached[temp] if f is not None]
        found = (f"{min(fractions):.1%}-{max(fractions):.1%} of their bytes in the page cache "
                 "(fincore)") if fractions else "page cache not checked (no fincore)"
        print(f"{temp}: before each run the store shards and raw copies were {what}; "
              f"{found}")
    print("| phase | rows/s | MB/s | seconds | CPU seconds (in workers) | peak RSS above baseline "
          "|")
    print("|---|---:|---:|---:|---:|---:|")
    for name, secs, cpu, peak, workers_cpu in table:
        cpu_s = "-" if cpu is None else f"{cpu:.2f}" + (f" ({workers_cpu:.2f})" if workers_cpu
                                                         else "")
        peak_s = "-" if peak is None else f"{peak:,.0f} MB"
        print(f"| {name} | {args.rows / secs:,.0f} | {mb / secs:,.0f} | {secs:.2f} | {cpu_s} | "
              f"{peak_s} |")
    labels = dict(KINDS)
    for temp in ("cold", "warm"):
        for mine, raw in PAIRS:
            print(f"{temp}: {labels[mine]} at {seconds[temp, raw] / seconds[temp, mine]:.2f}x "
                  f"{labels[raw]} (CPU time: {cpus[temp, raw] / cpus[temp, mine]:.2f}x)")

if __name__ == "__main__":
    main()
