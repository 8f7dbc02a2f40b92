"""Resumable batch classification of a query store: committed parts plus a journal.

Part `i` holds the query rows whose store row id lies in `[i * batch_size, (i + 1) * batch_size)`,
so part boundaries depend only on the input, never on timing. Each part is written to a temporary
file, fsynced and renamed, then `journal.json` (replaced atomically) lists it as committed. A
rerun skips committed parts and rewrites the others, so the finished output holds every query
row exactly once and is byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, fsync_dir, write_json
from .errors import BadInput, TipError
from .output import Results, writer_for
from .progress import progress
from .rows import Rows

log = logging.getLogger(__name__)

JOURNAL = "journal.json"
SUCCESS = "_SUCCESS"
METHODS = ("tip", "zero-shot", "cache")
MODES = ("exact", "retrieval")
ENGINES = ("local", "ray")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassifyOptions:
    """What to compute and how to write it; all of it determines the output."""

    top_k: int = 5
    method: str = "tip"
    mode: str = "exact"
    k: int = 64
    fmt: str = "parquet"
    batch_size: int = 8192
    logits: bool = False
    split: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInput(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise BadInput(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        for name in ("top_k", "k", "batch_size"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name.replace('_', '-')} must be at least 1")
        writer_for(self.fmt)


@dataclass(frozen=True)
class JobSpec:
    """The identity of a job: its inputs (with their generations) and its options."""

    cache_id: str
    cache_generation: int
    store_id: str
    store_generation: int
    options: ClassifyOptions

    def digest(self) -> str:
        """A hash of the job parameters, stored in the journal."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JobSpec:
        return cls(**{**obj, "options": ClassifyOptions(**obj["options"])})

    def differences(self, other: JobSpec) -> dict[str, tuple[Any, Any]]:
        """Fields (options flattened) whose values differ, as (self, other)."""
        mine = {**asdict(self), **asdict(self.options)}
        theirs = {**asdict(other), **asdict(other.options)}
        return {k: (v, theirs[k]) for k, v in mine.items() if k != "options" and v != theirs[k]}


@dataclass(frozen=True)
class PartRecord:
    """One committed part: its store row-id range, row count, file and cache generation."""

    index: int
    start: int
    stop: int
    rows: int
    file: str
    cache_generation: int


@dataclass
class Journal:
    """The state of an output directory: the job, its committed parts and completion."""

    spec: JobSpec
    store_rows: int
    parts: dict[int, PartRecord] = field(default_factory=dict)
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": _FORMAT_VERSION,
            "state": "complete" if self.complete else "running",
            "spec_hash": self.spec.digest(),
            "spec": self.spec.to_json(),
            "store_rows": self.store_rows,
            "rows": sum(p.rows for p in self.parts.values()),
            "parts": [asdict(self.parts[i]) for i in sorted(self.parts)],
        }

    @classmethod
    def load(cls, out: Path) -> Journal:
        """Read `out/journal.json`; TipError when it is not a classify output."""
        try:
            obj = json.loads((out / JOURNAL).read_text())
            return cls(
                spec=JobSpec.from_json(obj["spec"]),
                store_rows=int(obj["store_rows"]),
                parts={p["index"]: PartRecord(**p) for p in obj["parts"]},
                complete=obj["state"] == "complete",
            )
        except FileNotFoundError:
            raise TipError(f"{out} has no {JOURNAL}: it is not a classify output") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise TipError(
                f"{out / JOURNAL} is unreadable ({exc}): rerun with --overwrite"
            ) from None

    def save(self, out: Path) -> None:
        write_json(out / JOURNAL, self.to_json())

    def commit(self, out: Path, record: PartRecord) -> None:
        """Record a part whose file is already durable, then persist the journal."""
        self.parts[record.index] = record
        self.save(out)

    def finish(self, out: Path) -> None:
        """Mark the job complete (journal state and the `_SUCCESS` marker)."""
        self.complete = True
        self.save(out)
        with atomic_path(out / SUCCESS) as tmp:
            tmp.write_text(self.spec.digest() + "\n")


def part_file(index: int, fmt: str) -> str:
    return f"part-{index:06d}{writer_for(fmt).suffix}"


def part_ranges(store_rows: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(index, start, stop) row-id ranges of every part of a store with `store_rows` rows."""
    return [(i, s, min(s + batch_size, store_rows))
            for i, s in enumerate(range(0, store_rows, batch_size))]


def classify_rows(cache, rows: Rows, options: ClassifyOptions) -> Results:
    """Logits, top-k classes and softmax probabilities of one batch of query rows."""
    from .adapter import top_k

    logits = cache.logits(rows.features, method=options.method, mode=options.mode, k=options.k)
    best = top_k(logits, options.top_k)
    return Results(
        ids=rows.ids, row_ids=rows.row_ids, classes=best.classes,
        names=np.asarray(cache.classes, dtype=object)[best.classes], probs=best.probs,
        logits=np.asarray(logits, dtype=np.float32) if options.logits else None,
    )


def write_part(out: Path, spec: JobSpec, index: int, start: int, stop: int,
               results: Results) -> PartRecord:
    """Write one part durably (temp file, fsync, rename) and describe it for the journal."""
    name = part_file(index, spec.options.fmt)
    with atomic_path(out / name) as tmp:
        writer_for(spec.options.fmt).write(results, tmp)
    return PartRecord(index=index, start=start, stop=stop, rows=len(results), file=name,
                      cache_generation=spec.cache_generation)


def open_job(out: Path, spec: JobSpec, store_rows: int, *, overwrite: bool = False,
             accept_new_generation: bool = False) -> Journal:
    """The journal to continue in `out`: new, resumed, or refused when the job differs."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:  # the journal goes first: a kill must not leave it naming deleted parts
        for name in (SUCCESS, JOURNAL):
            (out / name).unlink(missing_ok=True)
        fsync_dir(out)
        _clear(out, keep=set())
    if not (out / JOURNAL).exists():
        if any(p for p in out.iterdir() if not p.name.startswith((".", "_"))):
            raise BadInput(f"{out} exists and is not a classify output: choose a new --out")
        journal = Journal(spec=spec, store_rows=store_rows)
        journal.save(out)
        return journal
    journal = Journal.load(out)
    diffs = journal.spec.differences(spec)
    changed = {k: v for k, v in diffs.items() if not k.endswith("_generation")}
    if changed:
        raise BadInput(f"{out} holds a classify job with other parameters ({_listed(changed)}): "
                       "use a new --out or pass --overwrite")
    if diffs and journal.complete:
        raise BadInput(f"{out} holds a finished job over older inputs ({_listed(diffs)}): "
                       "use a new --out or pass --overwrite to classify the current data")
    if diffs and not accept_new_generation:
        raise BadInput(f"the inputs changed since this job started ({_listed(diffs)}): pass "
                       "--accept-new-generation to finish with the current data, or --overwrite")
    if diffs:
        journal = _adopt(journal, spec, store_rows)
        journal.save(out)
    _clear(out, keep={p.file for p in journal.parts.values()})
    return journal


def _listed(diffs: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diffs.items())


def _adopt(journal: Journal, spec: JobSpec, store_rows: int) -> Journal:
    """Continue under new generations; a part cut short by the old store end is redone."""
    log.warning("continuing %s under new input generations", spec.digest()[:12])
    parts = {i: p for i, p in journal.parts.items()
             if p.stop < journal.store_rows or journal.store_rows == store_rows}
    return replace(journal, spec=spec, store_rows=store_rows, parts=parts, complete=False)


def _clear(out: Path, keep: set[str]) -> None:
    """Remove part files not listed in `keep` and temporary files left by a killed run."""
    for path in out.iterdir():
        stale = path.name.startswith("part-") and path.name not in keep
        if stale or (path.name.startswith(".") and path.name.endswith(".tmp")):
            path.unlink()


def use_all_cores() -> None:
    """Let torch and faiss use every core of this machine."""
    import faiss
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    faiss.omp_set_num_threads(cores)


def read_ahead(store, todo: list[tuple[int, int, int]], split: str | None,
               depth: int = 2) -> Iterator[tuple[int, int, int, Rows]]:
    """(index, start, stop, rows) of each part in `todo`, read up to `depth` parts ahead."""
    with ThreadPoolExecutor(1, thread_name_prefix="reader") as reader:
        window: deque[tuple[int, int, int, Future]] = deque()
        for index, start, stop in todo:
            window.append((index, start, stop,
                           reader.submit(read_part, store, start, stop, split)))
            if len(window) > depth:
                index, start, stop, rows = window.popleft()
                yield index, start, stop, rows.result()
        while window:
            index, start, stop, rows = window.popleft()
            yield index, start, stop, rows.result()


def read_part(store, start: int, stop: int, split: str | None) -> Rows:
    """The query rows (of `split`, or all) whose row ids lie in `[start, stop)`."""
    from .shard import ShardReader
    from .store import SHARD_DIR

    pieces = []
    for info in store.manifest.shards:
        lo, hi = max(start, info.first_row_id), min(stop, info.first_row_id + info.rows)
        if lo >= hi or (split is not None and split not in info.counts):
            continue
        with ShardReader(store.path / SHARD_DIR, info) as shard:
            block = shard.read(lo - info.first_row_id, hi - info.first_row_id)
        pieces.append(block.to_rows(None if split is None else block.splits == split))
    if not pieces:
        return Rows.make([], np.empty((0, store.dim), np.float32), row_ids=np.empty(0))
    return pieces[0] if len(pieces) == 1 else Rows.concat(pieces)


def query_rows(store, split: str | None) -> int:
    """How many rows a job over `store` classifies (from the manifest)."""
    return len(store) if split is None else store.split_counts().get(split, 0)


def run_local(cache, store, out: Path, journal: Journal, show_progress: bool = True) -> None:
    """Classify the parts `journal` lacks: read ahead, compute here, write in a thread."""
    use_all_cores()
    options = journal.spec.options
    todo = [r for r in part_ranges(journal.store_rows, options.batch_size)
            if r[0] not in journal.parts]
    pending: deque[Future] = deque()
    with progress(query_rows(store, options.split), "classify",
                  disable=not show_progress) as bar, \
            ThreadPoolExecutor(1, thread_name_prefix="writer") as writer:
        bar.update(sum(p.rows for p in journal.parts.values()))
        for index, start, stop, rows in read_ahead(store, todo, options.split):
            if not len(rows):
                continue
            results = classify_rows(cache, rows, options)
            pending.append(writer.submit(_write_and_commit, out, journal, index, start, stop,
                                         results))
            while len(pending) > 2:
                pending.popleft().result()
            bar.update(len(rows))
        for future in pending:
            future.result()


def _write_and_commit(out: Path, journal: Journal, index: int, start: int, stop: int,
                      results: Results) -> None:
    journal.commit(out, write_part(out, journal.spec, index, start, stop, results))


def classify_store(cache_path: str | Path, store_path: str | Path, out: str | Path,
                   options: ClassifyOptions | None = None, *, overwrite: bool = False,
                   accept_new_generation: bool = False, engine: str = "local",
                   ray_address: str | None = None, show_progress: bool = True) -> Journal:
    """Classify every query row of a store into `out`, resuming a killed run of the same job."""
    from .cache import Cache
    from .store import Store

    if engine not in ENGINES:
        raise BadInput(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    options = options or ClassifyOptions()
    cache = Cache.load(cache_path)
    store = Store.open(store_path)
    cache.provenance.check_compatible(store.provenance, what=f"query store {store_path}")
    spec = JobSpec(cache_id=str(Path(cache_path).resolve()), cache_generation=cache.generation,
                   store_id=store.store_id, store_generation=store.generation, options=options)
    out = Path(out)
    journal = open_job(out, spec, store.manifest.next_row_id, overwrite=overwrite,
                       accept_new_generation=accept_new_generation)
    if journal.complete:
        log.info("%s was already complete", out)
    elif engine == "ray":
        from .ray_engine import run_ray

        run_ray(cache, store, out, journal, address=ray_address, show_progress=show_progress)
    else:
        run_local(cache, store, out, journal, show_progress=show_progress)
    journal.finish(out)  # again when complete: a kill may have come before `_SUCCESS`
    log.info("%d rows classified into %s", journal.to_json()["rows"], out)
    return journal


def iter_output(out: str | Path, *, allow_partial: bool = False) -> Iterator[Results]:
    """The committed parts of a classify output, in input order (bounded memory)."""
    out = Path(out)
    journal = Journal.load(out)
    if not journal.complete and not allow_partial:
        raise TipError(f"{out} is incomplete: rerun the classify command to finish it")
    writer = writer_for(journal.spec.options.fmt)
    for index in sorted(journal.parts):
        yield writer.read(out / journal.parts[index].file)


def read_output(out: str | Path, *, allow_partial: bool = False) -> Results:
    """All results of a classify output as one `Results` (committed parts only)."""
    parts = list(iter_output(out, allow_partial=allow_partial))
    if not parts:
        raise TipError(f"{out} holds no results: the query store selected no rows")
    return Results.concat(parts)


QUERY_STORE = "_query_store"


def store_from_images(cache_path: str | Path, source: str | Path, out: str | Path, *,
                      model: str | None = None, checkpoint: str | Path | None = None,
                      device: str | None = None) -> Path:
    """Encode the images of `source` with the cache's encoder into `out/_query_store`.

    `model` (default: the cache's encoder name) may be an open_clip model-config JSON.
    Extraction skips images already stored, so a killed job resumes here too.
    """
    from .cache import Cache
    from .encode.extract import ExtractOptions, extract
    from .encode.model import RANDOM_WEIGHTS, load_encoder
    from .encode.sources import scan_source

    prov = Cache.load(cache_path).provenance
    if prov.weights.startswith("sha256:") and checkpoint is None:
        raise BadInput(f"the cache was encoded with a checkpoint file ({prov.weights[:19]}...): "
                       "pass it with --checkpoint")
    pretrained = None if checkpoint or prov.weights == RANDOM_WEIGHTS else prov.weights
    encoder = load_encoder(model or prov.encoder, pretrained=pretrained, checkpoint=checkpoint,
                           device=device)
    prov.check_compatible(encoder.provenance, what="the images' encoder")
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / QUERY_STORE
    extract(scan_source(source, unlabelled=True), path, encoder,
            ExtractOptions(split="query", views=0, progress=False))
    return path
