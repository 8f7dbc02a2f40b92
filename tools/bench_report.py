"""Size and build time of the HTML report of a large classify output; prints one table.

Generates a synthetic labelled store of N rows (default 1M, 1000 classes, 64-d features: no
images), a 1000-class cache whose classes have 1-16 keys, classifies the store (top-5, parquet;
zero-shot, so that the output is made in seconds: the report reads the output, not the method)
and builds the report twice: the first build, then a rebuild.

    .venv/bin/python tools/bench_report.py [--rows 1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from peak_rss import peak_rss_mib

from tipretrieval.cache.cache import Cache
from tipretrieval.demo.synthetic import make_dataset
from tipretrieval.jobs.classify import ClassifyOptions, classify_store
from tipretrieval.jobs.report import build_report
from tipretrieval.rows import Rows
from tipretrieval.store.store import Store

CLASSES, DIM, CHUNK = 1000, 64, 100_000


def write_store(path: Path, data, n: int) -> Store:
    """`n` labelled synthetic 'test' rows, balanced over the classes, in shards of CHUNK."""
    store = Store.create(path, dim=data.dim, provenance=data.provenance(), classes=data.classes)
    rng = np.random.default_rng([data.seed, 7, n])
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        labels = rng.integers(0, data.num_classes, size)
        store.append(Rows.make([f"img/{i:08d}.jpg" for i in range(start, start + size)],
                               data.images(labels, rng), labels, splits="test"))
    return store.refresh()


def write_cache(path: Path, data, store: Store) -> None:
    """Class c gets 1 + c % 16 keys (so accuracy by shots per class has several rows)."""
    per_class = 1 + np.arange(data.num_classes) % 16
    labels = np.repeat(np.arange(data.num_classes), per_class)
    rng = np.random.default_rng(5)
    feats = data.images(labels, rng)
    base = store.manifest.next_row_id
    shots = Rows.make([f"shot/{i}" for i in range(len(labels))], feats, labels,
                      row_ids=np.arange(base, base + len(labels)))
    Cache.from_rows(shots, data.classes, data.provenance(), text=data.text).save(path)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(work: Path) -> dict:
    """Build the report of `work/preds` in a child process: its figures and peak RSS."""
    child = subprocess.run([sys.executable, __file__, "--build", str(work)], check=True,
                           capture_output=True, text=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build is not None:  # the child: one report build
        result = build_report(args.build / "preds", args.build / "html",
                              store=args.build / "store")
        print(json.dumps({**asdict(result), "index": str(result.index), "rss_mib": peak_rss_mib()}))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_report-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = make_dataset(CLASSES, DIM, seed=0)
        t0 = time.perf_counter()
        store = write_store(work / "store", data, args.rows)
        write_cache(work / "cache", data, store)
        t1 = time.perf_counter()
        classify_store(work / "cache", work / "store", work / "preds",
                       ClassifyOptions(top_k=5, method="zero-shot", batch_size=65536),
                       show_progress=False)
        t2 = time.perf_counter()
        first, again = build(work), build(work)
        print(f"| {args.rows:,} rows, {CLASSES} classes, no images | value |\n|---|---:|")
        print(f"| synthetic store + cache written | {t1 - t0:.1f} s |")
        print(f"| classify (zero-shot, top-5 parquet, {du(work / 'preds') / 1e6:.0f} MB) | "
              f"{t2 - t1:.1f} s |")
        print(f"| report build | {first['seconds']:.1f} s |")
        print(f"| report rebuild | {again['seconds']:.1f} s |")
        print(f"| report size | {first['bytes'] / 1e6:.1f} MB in {first['pages']} pages |")
        print(f"| rows shown on class pages | {first['shown']} |")
        print(f"| peak RSS of the report build (child process, with ~1 GB of imports) | "
              f"{first['rss_mib']:.0f} MiB |")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
