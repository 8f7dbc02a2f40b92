"""Scale benchmark: import, index, search and classify a large embedding dump; one table.

(a) import --files float16 .npy files of --rows x --dim rows plus parquet metadata
    (clip-retrieval layout) with `import_dump`: rows/s and peak memory (the summed PSS of the
    child process and its writer process, sampled every second; its own VmHWM too), against
    raw h5py writing the same columns in the same dtypes in this run (features, labels,
    splits, ids, sources; fletcher32 on as in the store; target >= 0.8x, RSS < 1 GB); both
    start with the dump evicted from the page cache (what one read is not left for the other),
    and --repeat pairs of them run alternately, the best of each compared (the raw writer
    alone varied from 236,000 to 415,000 rows/s at 10M rows with the state of the kernel's
    page cache);
(b) build the store's search index (--index-spec, default IVF<sqrt n>,SQ8): seconds;
(c) search latency p50/p99 at k=10, one query at a time, IVF on --queries held-out queries
    vs exact (a flat index over the rows, only when they fit in --exact-budget) on the first
    --exact-queries of them (each scans every row), recall@10 of all --queries against a
    brute-force scan of the store;
(d) classify every row in retrieval mode (k=64) with a --keys-key IVF cache: rows/s and the
    peak RSS against the same job over --rows/10 rows (target <= 1.2x).
Every step runs in a child process, so each peak RSS is its own. Disk: about 2 x rows x dim
x 2 bytes (dump + store) + the baseline file + the index; the work directory is removed.

    .venv/bin/python tools/bench_scale.py                 # the full 10M x 512 run
    .venv/bin/python tools/bench_scale.py --rows 1000000  # what a small machine can do
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from page_cache import drop_cache, resident
from peak_rss import TreePeak, peak_rss_mib

CLASSES = 1000


def dataset(dim: int):
    from tipretrieval.demo.synthetic import make_dataset

    return make_dataset(CLASSES, dim, seed=0)


# --- the dump ------------------------------------------------------------------------------
def write_dump(root: Path, rows: int, files: int, dim: int) -> None:
    """clip-retrieval layout: img_emb/img_emb_N.npy (float16) + metadata/metadata_N.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = dataset(dim)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    per = -(-rows // files)
    rng = np.random.default_rng(1)
    for n in range(files):
        a, b = n * per, min(rows, (n + 1) * per)
        out = np.lib.format.open_memmap(root / "img_emb" / f"img_emb_{n}.npy", mode="w+",
                                        dtype=np.float16, shape=(b - a, dim))
        labels = rng.integers(0, CLASSES, b - a)
        for s in range(0, b - a, 65_536):
            out[s:s + 65_536] = data.images(labels[s:s + 65_536], rng)
        out.flush()
        del out
        pq.write_table(pa.table({
            "image_path": [f"shard{n:02d}/{i:09d}.jpg" for i in range(a, b)],
            "label": np.asarray(data.classes, dtype=object)[labels].tolist(),
        }), root / "metadata" / f"metadata_{n}.parquet")


def _utf8(h5, name: str, strings, at: int, used: int) -> int:
    """Append a pyarrow string array as `{name}_utf8` bytes + `{name}_end` offsets (the
    store's layout), straight from arrow's buffers; returns the bytes used so far."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[
        strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    h5[f"{name}_utf8"].resize((used + len(data),))
    h5[f"{name}_utf8"][used:] = data
    h5[f"{name}_end"][at:at + len(strings)] = offsets[1:] - offsets[0] + used
    return used + len(data)


def raw_h5py(root: Path, out: Path) -> float:
    """Seconds for h5py to write the columns the store keeps, in its dtypes, into one file: the
    baseline. Features float16, labels int64 (the names' dictionary codes), splits uint32, ids
    and sources as UTF-8 bytes + int64 end offsets; every dataset with fletcher32 (as the
    store's shards); one fsync at the end. No validation, no normalisation, no id hashing."""
    import h5py
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted((root / "img_emb").glob("*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
    total = sum(np.load(f, mmap_mode="r").shape[0] for f in files)
    dim = np.load(files[0], mmap_mode="r").shape[1]
    rows = min(total, 65_536)  # chunk rows of the small columns (no larger than the data)
    start = time.perf_counter()
    with h5py.File(out, "w") as h5:
        ds = h5.create_dataset("features", (total, dim), dtype=np.float16,
                               chunks=(min(total, 4096), dim), fletcher32=True)
        labels = h5.create_dataset("labels", (total,), np.int64, chunks=(rows,),
                                   fletcher32=True)
        splits = h5.create_dataset("splits", (total,), np.uint32, chunks=(rows,),
                                   fletcher32=True)
        for name in ("ids", "sources"):
            h5.create_dataset(f"{name}_utf8", (0,), np.uint8, maxshape=(None,),
                              chunks=(1 << 18,), fletcher32=True)
            h5.create_dataset(f"{name}_end", (total,), np.int64, chunks=(rows,),
                              fletcher32=True)
        at, used = 0, {"ids": 0, "sources": 0}
        for f in files:
            x = np.load(f, mmap_mode="r")
            meta = pq.ParquetFile(root / "metadata" / f"metadata_{f.stem.split('_')[-1]}.parquet")
            batches = meta.iter_batches(131_072, columns=["image_path", "label"])
            for s, batch in zip(range(0, len(x), 131_072), batches, strict=True):
                block = np.asarray(x[s:s + 131_072])
                n = len(block)
                ds[at:at + n] = block
                labels[at:at + n] = pc.dictionary_encode(batch.column("label")).indices \
                    .to_numpy().astype(np.int64)
                splits[at:at + n] = np.zeros(n, np.uint32)
                for name in used:
                    used[name] = _utf8(h5, name, batch.column("image_path"), at, used[name])
                at += n
        h5.flush()
    with open(out, "rb+") as fh:
        os.fsync(fh.fileno())
    return time.perf_counter() - start


# --- child steps (each prints one JSON line) -----------------------------------------------
def child_import(dump: str, store: str, shard_rows: str) -> dict:
    from tipretrieval.store.dump_read import Columns
    from tipretrieval.store.dumps import DumpOptions, import_dump

    start = time.perf_counter()
    with TreePeak() as tree:  # with the import's writer process
        done = import_dump(dump, store, DumpOptions(
            columns=Columns(ids="image_path", labels="label", sources="image_path"),
            shard_rows=int(shard_rows), encoder="synthetic", weights="seed:0", progress=False))
    return {"seconds": time.perf_counter() - start, "rows": done.rows, "tree_pss_mib": tree.mib}


def child_index(store: str, spec: str, params: str) -> dict:
    from tipretrieval.jobs.search import StoreIndex
    from tipretrieval.store.store import Store

    start = time.perf_counter()
    index = StoreIndex.ensure(Store.open(store), spec=spec, params=params, show_progress=False)
    return {"seconds": time.perf_counter() - start, "rows": index.info.rows}


def child_search(store: str, queries: str, exact_budget: str, exact_queries: str) -> dict:
    """Latencies of the store index and of an exact flat index, and recall@10."""
    import faiss

    from tipretrieval.jobs.search import StoreIndex
    from tipretrieval.store.store import Store

    st = Store.open(store)
    q = np.load(queries)
    index = StoreIndex.load(store)
    ivf_ms, ivf_ids = [], []
    for x in q:
        t = time.perf_counter()
        _, ids = index.search(x[None], 10)
        ivf_ms.append((time.perf_counter() - t) * 1e3)
        ivf_ids.append(ids[0])
    truth = brute_top10(st, q)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in
                            zip(np.array(ivf_ids).tolist(), truth.tolist(), strict=True)]))
    result = {"ivf_p50": float(np.percentile(ivf_ms, 50)),
              "ivf_p99": float(np.percentile(ivf_ms, 99)), "recall": recall}
    if len(st) * st.dim * 4 <= float(exact_budget):
        flat = faiss.IndexFlatIP(st.dim)
        for rows in st.iter_rows(131_072, columns=("features",)):
            flat.add(rows.features)
        exact_ms = []
        for x in q[:int(exact_queries)]:
            t = time.perf_counter()
            flat.search(x[None], 10)
            exact_ms.append((time.perf_counter() - t) * 1e3)
        result |= {"exact_p50": float(np.percentile(exact_ms, 50)),
                   "exact_p99": float(np.percentile(exact_ms, 99))}
    return result


def brute_top10(store, q: np.ndarray) -> np.ndarray:
    """Exact top-10 row ids of each query by a chunked scan of the store (float32)."""
    best_s = np.full((len(q), 10), -np.inf, np.float32)
    best_i = np.full((len(q), 10), -1, np.int64)
    for rows in store.iter_rows(131_072, columns=("features", "row_ids")):
        s = q @ rows.features.T
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(rows.row_ids, s.shape)], axis=1)
        top = np.argpartition(-cand_s, 9, axis=1)[:, :10]
        best_s = np.take_along_axis(cand_s, top, 1)
        best_i = np.take_along_axis(cand_i, top, 1)
    return best_i


def child_classify(cache: str, store: str, out: str) -> dict:
    from tipretrieval.jobs.classify import ClassifyOptions, classify_store

    start = time.perf_counter()
    journal = classify_store(cache, store, out, ClassifyOptions(mode="retrieval", k=64,
                                                                batch_size=16_384),
                             show_progress=False)
    return {"seconds": time.perf_counter() - start, "rows": journal.to_json()["rows"]}


STEPS = ("import", "index", "search", "classify")
CHILDREN = {"import": child_import, "index": child_index, "search": child_search,
            "classify": child_classify}


def run_child(step: str, *args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", step, *map(str, args)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the cache and the smaller classify job -------------------------------------------------
def write_cache(path: Path, keys: int, dim: int, spec: str) -> None:
    from tipretrieval.cache.cache import Cache
    from tipretrieval.rows import Rows

    data = dataset(dim)
    feats, labels = data.draw(keys, stream=2)
    rows = Rows.make([f"k/{i}" for i in range(keys)], feats, labels,
                     row_ids=np.arange(keys, dtype=np.int64))
    cache = Cache.from_rows(rows, data.classes, data.provenance(), text=data.text,
                            index_spec=spec, index_params="nprobe=8")
    cache.set_params(1.0, 5.5)
    cache.save(path)


def first_rows(store: Path, out: Path, n: int) -> None:
    """A store holding the first `n` rows of `store` (the smaller classify job)."""
    from tipretrieval.store.store import Store

    src = Store.open(store)
    dst = Store.create(out, dim=src.dim, provenance=src.provenance, classes=src.classes)
    for rows in src.iter_rows(131_072):
        take = min(len(rows), n - len(dst))
        if take <= 0:
            break
        dst.append(rows.take(np.arange(take)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        result = CHILDREN[sys.argv[2]](*sys.argv[3:])
        print(json.dumps(result | {"peak_rss_mib": peak_rss_mib()}))
        return
    from tipretrieval.store.dumps import SHARD_ROWS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--keys", type=int, default=None, help="cache keys [default: rows / 10]")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--shard-rows", type=int, default=SHARD_ROWS)
    p.add_argument("--repeat", type=int, default=2,
                   help="raw h5py / import pairs timed alternately, the best of each compared")
    p.add_argument("--index-spec", default=None,
                   help="store index [default: IVF<2^round(log2 sqrt(rows))>,SQ8]")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--exact-budget", type=float, default=8e9,
                   help="bytes a flat float32 index may take for the exact latencies")
    p.add_argument("--exact-queries", type=int, default=200,
                   help="queries timed on the exact flat index (each scans every row)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--steps", default=",".join(STEPS),
                   help="comma list of steps to run (the store is always imported) "
                        f"[default: {','.join(STEPS)}]")
    args = p.parse_args()
    args.steps = set(args.steps.split(","))
    if not args.steps <= set(STEPS):
        p.error(f"--steps takes a comma list of {', '.join(STEPS)}")
    keys = args.keys or args.rows // 10
    nlist = 2 ** round(np.log2(np.sqrt(args.rows)))
    spec = args.index_spec or f"IVF{nlist},SQ8"
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    try:
        table = run(args, work, keys, spec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench_scale: {args.rows:,} x {args.dim} float16 rows in {args.files} files, "
          f"{keys:,}-key cache, {args.queries} queries")
    print("| item | value | target | met |\n|---|---|---|---|")
    for item, value, target, met in table:
        mark = "" if met is None else ("yes" if met else "NO")
        print(f"| {item} | {value} | {target} | {mark} |")


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def cpu_s(who: int) -> float:
    """User + system CPU seconds of this process or of its waited-for children."""
    use = resource.getrusage(who)
    return use.ru_utime + use.ru_stime


def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def run(args, work: Path, keys: int, spec: str) -> list[tuple]:
    t = time.perf_counter()
    load_start = load()
    write_dump(work / "dump", args.rows, args.files, args.dim)
    gen_s = time.perf_counter() - t
    table = [("dump generated (not timed against anything)", f"{gen_s:.0f} s, "
              f"{disk_mib(work / 'dump'):,.0f} MiB", "", None)]
    dump = sorted(p for p in (work / "dump").rglob("*") if p.is_file())
    cached = []  # the dump's bytes in the page cache as each timed step starts
    raws, imports = [], []  # (rows/s, CPU s) and the import children's results
    repeat = max(1, args.repeat) if "import" in args.steps else 1
    for k in range(repeat):
        if "import" in args.steps:
            drop_cache(dump)  # both start from a dump on disk, not from what the other left
            cached.append(resident(dump))
            cpu = cpu_s(resource.RUSAGE_SELF)
            h5_s = raw_h5py(work / "dump", work / "baseline.h5")
            raws.append((args.rows / h5_s, cpu_s(resource.RUSAGE_SELF) - cpu))
            (work / "baseline.h5").unlink()
        drop_cache(dump)
        cached.append(resident(dump))
        store = work / ("store" if k == repeat - 1 else f"store-{k}")
        cpu = cpu_s(resource.RUSAGE_CHILDREN)
        imports.append(run_child("import", work / "dump", store, args.shard_rows))
        imports[-1]["cpu_s"] = cpu_s(resource.RUSAGE_CHILDREN) - cpu
        peak_disk = disk_mib(work)
        if store.name != "store":
            shutil.rmtree(store)
    if "import" in args.steps:
        rates = [i["rows"] / i["seconds"] for i in imports]
        best, raw = max(range(repeat), key=rates.__getitem__), max(raws)
        rate, imp = rates[best], imports[best]
        runs = "; runs: " + ", ".join(f"{i:,.0f} / {r:,.0f}" for i, (r, _) in
                                      zip(rates, raws, strict=True)) if repeat > 1 else ""
        table += [(f"(a) import rows/s vs raw h5py writing the same columns and dtypes "
                   f"(fletcher32 on, one fsync; no validation): best of {repeat}",
                   f"{rate:,.0f} vs {raw[0]:,.0f} = {rate / raw[0]:.2f}x{runs}", ">= 0.8x",
                   rate / raw[0] >= 0.8),
                  ("(a) import peak memory: PSS of the importer and its writer process "
                   "together (importer's own peak RSS), highest of the runs",
                   f"{max(i['tree_pss_mib'] for i in imports):,.0f} MiB "
                   f"({max(i['peak_rss_mib'] for i in imports):,.0f} MiB)", "< 1 GB",
                   max(max(i["tree_pss_mib"], i["peak_rss_mib"]) for i in imports) < 1000),
                  ("(a) import CPU seconds (user + system) vs raw h5py, of the best runs",
                   f"{imp['cpu_s']:.1f} vs {raw[1]:.1f}", "", None),
                  ("(a) the dump evicted from the page cache (fsync + fadvise) before each: "
                   "its share cached at the start (fincore)",
                   " / ".join("-" if c is None else f"{c:.1%}" for c in cached), "", None)]
    shutil.rmtree(work / "dump")
    if {"index", "search"} & args.steps:  # search needs the index
        idx = run_child("index", work / "store", spec, f"nprobe={args.nprobe}")
        table.append((f"(b) store index build ({spec}, nprobe={args.nprobe})",
                      f"{idx['seconds']:.0f} s, peak RSS {idx['peak_rss_mib']:,.0f} MiB", "",
                      None))
    if "search" in args.steps:
        data = dataset(args.dim)
        np.save(work / "q.npy", data.draw(args.queries, stream=11)[0])
        s = run_child("search", work / "store", work / "q.npy", args.exact_budget,
                      args.exact_queries)
        exact = (f"exact p50 {s['exact_p50']:.1f} / p99 {s['exact_p99']:.1f} ms"
                 if "exact_p50" in s else "exact: not measured (flat index over --exact-budget)")
        table.append((f"(c) search k=10: IVF p50 / p99 ({args.queries} queries) vs exact "
                       f"({min(args.exact_queries, args.queries)} queries), recall@10",
                      f"IVF p50 {s['ivf_p50']:.2f} / p99 {s['ivf_p99']:.2f} ms; {exact}; "
                      f"recall@10 {s['recall']:.3f}", "", None))
    store_mib = disk_mib(work / "store")
    if "classify" not in args.steps:
        return table + footer(store_mib, peak_disk, load_start, t)
    write_cache(work / "cache", keys, args.dim, f"IVF{2 ** round(np.log2(np.sqrt(keys)))},Flat")
    first_rows(work / "store", work / "small", args.rows // 10)
    small = run_child("classify", work / "cache", work / "small", work / "out-small")
    shutil.rmtree(work / "small")
    shutil.rmtree(work / "out-small")
    big = run_child("classify", work / "cache", work / "store", work / "out")
    ratio = big["peak_rss_mib"] / small["peak_rss_mib"]
    table += [(f"(d) classify {args.rows:,} rows, retrieval k=64, {keys:,}-key IVF cache",
               f"{big['rows'] / big['seconds']:,.0f} rows/s ({big['seconds']:.0f} s); "
               f"{args.rows // 10:,} rows: {small['rows'] / small['seconds']:,.0f} rows/s", "",
               None),
              (f"(d) classify peak RSS {args.rows // 10:,} -> {args.rows:,} rows",
               f"{small['peak_rss_mib']:,.0f} -> {big['peak_rss_mib']:,.0f} MiB = {ratio:.2f}x",
               "<= 1.2x", ratio <= 1.2),
              *footer(store_mib, peak_disk, load_start, t)]
    return table


def footer(store_mib: float, peak_disk: float, load_start: str, t: float) -> list[tuple]:
    """The last rows of the table: disk use, load average and wall time."""
    return [("disk: store (with its search index); peak (dump + store)",
             f"{store_mib:,.0f} MiB; {peak_disk:,.0f} MiB", "", None),
            ("load average (1 / 5 / 15 min) at start -> end; wall time",
             f"{load_start} -> {load()}; {time.perf_counter() - t:,.0f} s", "", None)]


if __name__ == "__main__":
    main()
