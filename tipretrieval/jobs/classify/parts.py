"""One part of a classify output: its row-id range, its results and its durable file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...method.adapter import top_k
from ...rows import Rows
from ...store.store import Store
from ...util.atomic import atomic_path
from ...util.checksum import file_sha256
from .evidence import KeyIds, evidence_columns
from .journal import JobSpec, PartRecord
from .options import ClassifyOptions
from .output import Results, writer_for


def part_file(index: int, fmt: str) -> str:
    return f"part-{index:06d}{writer_for(fmt).suffix}"


def part_ranges(store_rows: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(index, start, stop) row-id ranges of every part of a store with `store_rows` rows."""
    return [(i, s, min(s + batch_size, store_rows))
            for i, s in enumerate(range(0, store_rows, batch_size))]


def classify_rows(cache, rows: Rows, options: ClassifyOptions,
                  key_ids: KeyIds | None = None) -> Results:
    """Logits, top-k classes and softmax probabilities of one batch of query rows (and the
    evidence of the top class when `options.evidence`; `key_ids` names the keys)."""
    logits = cache.logits(rows.features, method=options.method, mode=options.mode, k=options.k)
    best = top_k(logits, options.top_k)
    evidence = {} if not options.evidence else evidence_columns(
        cache, key_ids or KeyIds.of(cache), rows.features, best.classes[:, 0], options.evidence)
    return Results(
        ids=rows.ids, row_ids=rows.row_ids, classes=best.classes,
        names=np.asarray(cache.classes, dtype=object)[best.classes], probs=best.probs,
        logits=np.asarray(logits, dtype=np.float32) if options.logits else None, **evidence,
    )


def write_part(out: Path, spec: JobSpec, index: int, start: int, stop: int,
               results: Results) -> PartRecord:
    """Write one part durably (temp file, fsync, rename) and describe it for the journal."""
    name = part_file(index, spec.options.fmt)
    with atomic_path(out / name) as tmp:
        writer_for(spec.options.fmt).write(results, tmp)
        sha256 = file_sha256(tmp)
    return PartRecord(index=index, start=start, stop=stop, rows=len(results), file=name,
                      sha256=sha256, cache_generation=spec.cache_generation)


def read_part(store: Store, start: int, stop: int, split: str | None) -> Rows:
    """The query rows (of `split`, or all) whose row ids lie in `[start, stop)`."""
    return store.read_range(start, stop, split=split)


def query_rows(store: Store, split: str | None) -> int:
    """How many rows a job over `store` classifies (from the manifest)."""
    return len(store) if split is None else store.split_counts().get(split, 0)
