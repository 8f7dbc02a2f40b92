"""Accuracy tables: top-1 and top-5 of each query method of a cache on a store's labelled rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..cache.labels import class_map, relabel
from ..errors import BadInput
from ..method.adapter import METHODS
from ..util.progress import progress

EVAL_METHODS: tuple[str, ...] = (*METHODS, "tip-f")  # tip-f: the fine-tuned keys, if any


@dataclass
class Score:
    """One method's accuracy in percent, or None with the reason it was not computed."""

    method: str
    top1: float | None
    top5: float | None
    note: str | None = None


@dataclass
class EvalReport:
    """Accuracies of several methods on the same labelled rows."""

    store: str
    split: str
    rows: int
    mode: str
    k: int | None
    scores: list[Score]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        """A plain table for the terminal."""
        where = "exact" if self.mode == "exact" else f"retrieval k={self.k}"
        lines = [f"{self.rows} labelled '{self.split}' rows of {self.store} ({where} mode)",
                 f"{'method':<10} {'top-1':>7} {'top-5':>7}"]
        for s in self.scores:
            if s.top1 is None:
                lines.append(f"{s.method:<10} {'-':>7} {'-':>7}  ({s.note})")
            else:
                lines.append(f"{s.method:<10} {s.top1:>7.2f} {s.top5:>7.2f}")
        return "\n".join(lines)


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(B,) bool: whether each row's label is among its k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def _unavailable(cache, method: str) -> str | None:
    if method not in EVAL_METHODS:
        raise BadInput(f"unknown method {method!r}: choose from {', '.join(EVAL_METHODS)}")
    if method == "tip-f" and cache.method != "tip-f":
        return "cache is not fine-tuned: run `tipretrieval finetune` first"
    if method in ("zero-shot", "tip", "tip-f") and cache.text is None:
        return "cache has no text classifier: use cache or gda"
    return None


def _training_free(cache, store, notes: dict[str, str | None]):
    """The un-fine-tuned cache for the 'tip' row of a fine-tuned one, when `store` has it."""
    if cache.method != "tip-f":
        return cache
    if store.store_id != cache.store_id:
        notes["tip"] = "keys are fine-tuned; evaluate on the cache's own store to see tip"
        return cache
    return cache.training_free(store)


def evaluate(cache, store, *, split: str = "test", methods: Sequence[str] = EVAL_METHODS,
             mode: str = "exact", k: int = 64, batch_size: int = 8192) -> EvalReport:
    """Top-1/top-5 accuracy (percent) of `methods` on the labelled `split` rows of `store`."""
    cache.provenance.check_compatible(store.provenance, f"rows of store {store.path}")
    notes = {m: _unavailable(cache, m) for m in methods}
    base = _training_free(cache, store, notes) if "tip" in methods else cache
    active = [m for m in methods if notes[m] is None]
    mapping = class_map(cache.classes, store.classes)
    hits = {m: np.zeros(2, dtype=np.int64) for m in active}
    groups: dict[int, tuple[Any, list[str]]] = {}  # one logits pass per cache
    for m in active:
        source = base if m == "tip" else cache
        groups.setdefault(id(source), (source, []))[1].append(m)
    total = 0
    with progress(None, f"eval {split}") as bar:
        for batch in store.iter_rows(batch_size, split=split):
            batch = batch.take(batch.labels >= 0)
            if not len(batch):
                continue
            labels = relabel(mapping, batch.labels, store.classes, split)
            for source, names in groups.values():
                for m, logits in source.logits_by_method(batch.features, names, mode=mode,
                                                         k=k).items():
                    hits[m] += [topk_hits(logits, labels, 1).sum(),
                                topk_hits(logits, labels, 5).sum()]
            total += len(batch)
            bar.update(len(batch))
    if total == 0:
        raise BadInput(f"store {store.path} has no labelled '{split}' rows",
                       "choose another `split=` or add labelled rows")
    scores = [Score(m, *(100.0 * hits[m] / total).tolist()) if notes[m] is None
              else Score(m, None, None, notes[m]) for m in methods]
    return EvalReport(str(store.path), split, total, mode, k if mode == "retrieval" else None,
                      scores)
