"""Benchmark the production query path; prints one table, every ratio measured in this run.

(a) classify a query store of 1M x 512 rows against a 16k-key, 1000-class cache: rows/s, and the
    peak RSS of a 100k-row job against a 1M-row job (each in a child process);
(b) the exact query path against the official dense Tip-Adapter formulation
    `exp(-beta * (1 - X K^T)) @ one_hot(labels)` at 16k and 160k keys;
(c) the exact cache term against the raw BLAS product X K^T alone;
(d) retrieval mode with an IVF index over 1M keys against exact mode: speed and agreement;
(e) adding 16 shots to a 1M-key cache against rebuilding it.

    .venv/bin/python tools/bench_classify.py [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from peak_rss import peak_rss_mib

BETA, ALPHA = 5.5, 1.0


@dataclass
class Row:
    """One line of the table."""

    item: str
    value: str
    target: str = ""
    met: bool | None = None


def best_time(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# --- (a) classify a store ------------------------------------------------------------------
def write_queries(path: Path, data, n: int, chunk: int = 100_000):
    """A query store of `n` synthetic rows written in shards of `chunk` rows."""
    from tipretrieval.rows import Rows
    from tipretrieval.store.store import Store

    store = Store.create(path, dim=data.dim, provenance=data.provenance(),
                         classes=data.classes)
    rng = np.random.default_rng([data.seed, 7, n])
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        labels = rng.integers(0, data.num_classes, size)
        store.append(Rows.make([f"q/{i:08d}" for i in range(start, start + size)],
                               data.images(labels, rng), splits="query"))
    return store


def write_cache(path: Path, data, keys: int):
    """A cache of `keys` synthetic shots (balanced over the classes) with the text classifier."""
    from tipretrieval.cache.cache import Cache
    from tipretrieval.rows import Rows

    feats, labels = data.draw(keys, stream=2)
    rows = Rows.make([f"k/{i}" for i in range(keys)], feats, labels,
                     row_ids=np.arange(keys, dtype=np.int64))
    cache = Cache.from_rows(rows, data.classes, data.provenance(), text=data.text)
    cache.set_params(ALPHA, BETA)
    cache.save(path)


def child_classify(cache: str, store: str, out: str, batch_size: int) -> None:
    """Run one classify job and print its seconds, rows and peak RSS as JSON (child process)."""
    from tipretrieval.jobs.classify import ClassifyOptions, classify_store

    start = time.perf_counter()
    journal = classify_store(cache, store, out, ClassifyOptions(batch_size=batch_size),
                             show_progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": journal.to_json()["rows"],
                      "peak_rss_mib": peak_rss_mib()}))


def run_child(cache: Path, store: Path, out: Path, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(cache), str(store), str(out),
           str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_store(args, work: Path) -> list[Row]:
    from tipretrieval.demo.synthetic import make_dataset

    data = make_dataset(args.classes, args.dim, seed=0)
    write_cache(work / "cache", data, args.keys)
    runs = {}
    for n in (args.small_queries, args.queries):
        write_queries(work / f"q{n}", data, n)
        runs[n] = run_child(work / "cache", work / f"q{n}", work / f"out{n}", args.batch_size)
        shutil.rmtree(work / f"q{n}")
        shutil.rmtree(work / f"out{n}")
    big, small = runs[args.queries], runs[args.small_queries]
    ratio = big["peak_rss_mib"] / small["peak_rss_mib"]
    return [
        Row(f"(a) classify {args.queries:,} x {args.dim} rows, {args.keys:,} keys, "
            f"{args.classes} classes (exact)",
            f"{big['rows'] / big['seconds']:,.0f} rows/s ({big['seconds']:.0f} s)"),
        Row(f"(a) peak RSS {args.small_queries:,} rows -> {args.queries:,} rows",
            f"{small['peak_rss_mib']:,.0f} -> {big['peak_rss_mib']:,.0f} MiB = {ratio:.2f}x",
            "<= 1.2x", ratio <= 1.2),
    ]


# --- (b), (c) exact query path -------------------------------------------------------------
def bench_exact(args) -> list[Row]:
    from tipretrieval.demo.synthetic import make_dataset

    data = make_dataset(args.classes, args.dim, seed=0)
    x = data.draw(args.query_batch, stream=9)[0]
    rows = []
    for m in (args.keys, args.big_keys):
        rows += exact_rows(args, data, x, m)
        gc.collect()
    return rows


def exact_rows(args, data, x_np: np.ndarray, m: int) -> list[Row]:
    """(b) and (c) at `m` keys."""
    import torch

    from tipretrieval.method.adapter import TipAdapter

    keys, labels = data.draw(m, stream=3)
    adapter = TipAdapter(keys, labels, args.classes, text=data.text, alpha=ALPHA, beta=BETA)
    x, k, text = torch.from_numpy(x_np), torch.from_numpy(keys), torch.from_numpy(data.text)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), args.classes).float()

    def dense() -> torch.Tensor:
        affinity = x @ k.t()
        cache_logits = ((-1) * (BETA - BETA * affinity)).exp() @ one_hot
        return 100.0 * x @ text.t() + cache_logits * ALPHA

    ours = best_time(lambda: adapter.logits(x_np), args.repeats)
    official = best_time(dense, args.repeats)
    err = float(np.abs(adapter.logits(x_np) - dense().numpy()).max())
    term = best_time(lambda: adapter.cache_term(x_np), args.repeats)
    blas = best_time(lambda: torch.mm(x, k.t()), args.repeats)
    return [
        Row(f"(b) exact query path vs official dense, M={m:,}, C={args.classes}",
            f"{ours * 1e3:,.0f} vs {official * 1e3:,.0f} ms = {official / ours:.1f}x "
            f"(max |diff| {err:.1e})", ">= 10x", official / ours >= 10),
        Row(f"(c) exact cache term vs raw X K^T, M={m:,}",
            f"{term * 1e3:,.0f} vs {blas * 1e3:,.0f} ms = {term / blas:.2f}x", "<= 1.3x",
            term / blas <= 1.3),
    ]


# --- (d), (e) a 1M-key cache ---------------------------------------------------------------
def bench_million(args, work: Path) -> list[Row]:
    from tipretrieval.cache.cache import Cache
    from tipretrieval.demo.synthetic import make_dataset
    from tipretrieval.rows import Rows

    data = make_dataset(args.classes, args.dim, seed=0)
    m = args.ivf_keys

    def rebuild() -> Cache:
        feats, labels = data.draw(m, stream=4)
        rows = Rows.make(np.arange(m).astype(str), feats, labels, row_ids=np.arange(m))
        del feats
        cache = Cache.from_rows(rows, data.classes, data.provenance(), text=data.text,
                                index_spec=args.ivf_spec)
        del rows
        cache.set_params(ALPHA, BETA)
        cache.save(work / "big")
        return cache

    start = time.perf_counter()
    rebuild()
    rebuild_s = time.perf_counter() - start
    gc.collect()
    cache = Cache.load(work / "big")
    assert cache.index.ntotal == m  # loaded, as a running service holds it
    feats, labels = data.draw(16, stream=5)
    shots = Rows.make([f"s/{i}" for i in range(16)], feats, labels,
                      row_ids=np.arange(m, m + 16))
    start = time.perf_counter()
    cache.add_shots(shots)
    cache.save()
    add_s = time.perf_counter() - start

    adapter = cache.adapter()
    x = data.draw(args.ivf_queries, stream=6)[0]
    start = time.perf_counter()
    exact_top1 = adapter.logits(x).argmax(1)
    exact_s = time.perf_counter() - start
    rows = []
    for nprobe in args.nprobe:
        adapter.index.set_params(f"nprobe={nprobe}")
        retr_s = best_time(lambda: adapter.logits(x, mode="retrieval", k=args.k), args.repeats)
        agree = float((adapter.logits(x, mode="retrieval", k=args.k).argmax(1)
                       == exact_top1).mean())
        rows += [
            Row(f"(d) retrieval ({args.ivf_spec}, nprobe {nprobe}, k {args.k}) vs exact, "
                f"M={m:,}", f"{exact_s * 1e3:,.0f} vs {retr_s * 1e3:,.0f} ms per "
                f"{args.ivf_queries} queries = {exact_s / retr_s:.1f}x", ">= 10x",
                exact_s / retr_s >= 10),
            Row(f"(d) top-1 agreement retrieval vs exact, nprobe {nprobe}", f"{agree:.2%}",
                ">= 99.5%", agree >= 0.995),
        ]
    return rows + [
        Row(f"(e) add 16 shots vs rebuild, M={m:,}",
            f"{add_s:.2f} vs {rebuild_s:.1f} s = {add_s / rebuild_s:.2%}", "<= 1%",
            add_s / rebuild_s <= 0.01),
    ]


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("item", "value", "target")]
    print(f"| {'measure':<{widths[0]}} | {'result':<{widths[1]}} | {'target':<{widths[2]}} | met |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|-----|")
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        cells = (r.item, r.value, r.target)
        print("| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True))
              + f" | {met:<3} |")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    p.add_argument("--queries", type=int, default=1_000_000)
    p.add_argument("--small-queries", type=int, default=100_000)
    p.add_argument("--keys", type=int, default=16_000)
    p.add_argument("--big-keys", type=int, default=160_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8192, help="classify part size")
    p.add_argument("--query-batch", type=int, default=512, help="queries in (b) and (c)")
    p.add_argument("--ivf-keys", type=int, default=1_000_000)
    p.add_argument("--ivf-spec", default="IVF1024,SQ8")
    p.add_argument("--nprobe", type=lambda v: [int(n) for n in v.split(",")],
                   default=[2, 4, 8], help="IVF lists probed, comma-separated")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--ivf-queries", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="abd", help="sections to run: a, b (b+c), d (d+e)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.queries, args.small_queries, args.keys, args.big_keys = 50_000, 5_000, 4000, 16_000
        args.ivf_keys, args.ivf_spec, args.ivf_queries = 100_000, "IVF256,SQ8", 500
        args.nprobe = [1, 2]
        args.repeats = 1
    return args


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_classify(*sys.argv[2:5], int(sys.argv[5]))
        return
    args = parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_classify.", dir=args.workdir))
    rows: list[Row] = []
    try:
        if "a" in args.only:
            rows += bench_store(args, work)
        if "b" in args.only:
            rows += bench_exact(args)
        if "d" in args.only:
            rows += bench_million(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()
