"""Choosing the rows a report shows, part by part in bounded memory: a seeded sample per class
and the rows the cache is least sure about (smallest top-1 - top-2 margin), spread over classes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..classify.output import Results


def take(results: Results, index: np.ndarray | slice) -> Results:
    """The rows `index` of `results` (every per-row array, optional ones included)."""
    return Results(**{f.name: None if getattr(results, f.name) is None
                      else getattr(results, f.name)[index] for f in fields(Results)})


def sample_key(row_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A pseudo-random uint64 per row id (splitmix64): the same rows are sampled on every run."""
    z = row_ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def margins(results: Results) -> np.ndarray:
    """Top-1 minus top-2 probability per row (1 when only one class was kept)."""
    if results.top_k < 2:
        return np.ones(len(results), dtype=np.float32)
    return results.probs[:, 0] - results.probs[:, 1]


def rank_in_group(group: np.ndarray, score) -> tuple[np.ndarray, np.ndarray]:
    """(order, rank): rows sorted by group then score, and each sorted row's rank in its group."""
    order = np.lexsort((score, group))
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    lengths = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, lengths)
    return order, rank


@dataclass
class Smallest:
    """Per group (predicted class), the `cap` rows with the smallest score seen so far."""

    cap: int
    results: Results | None = None
    score: np.ndarray | None = None

    def add(self, part: Results, score: np.ndarray) -> None:
        """Merge one part's rows, keeping at most `cap` per predicted class."""
        if self.cap < 1 or not len(part):
            return
        if self.results is not None:
            contenders = self._contenders(part.classes[:, 0], score)
            part, score = take(part, contenders), score[contenders]
            part = Results.concat([self.results, part])
            score = np.concatenate([self.score, score])
        order, rank = rank_in_group(part.classes[:, 0], score)
        keep = order[rank < self.cap]
        self.results, self.score = take(part, keep), score[keep]

    def _contenders(self, group: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Rows of a new part that can still be kept: their class has fewer than `cap` rows
        or they beat its worst kept score (a tie loses to the earlier row, as in the sort)."""
        kept = self.results.classes[:, 0]
        size = int(max(kept.max(), group.max())) + 1
        full = np.bincount(kept, minlength=size) >= self.cap
        worst = np.full(size, np.iinfo(score.dtype).min if score.dtype.kind in "iu" else -np.inf,
                        dtype=score.dtype)
        np.maximum.at(worst, kept, self.score)
        return np.flatnonzero(~full[group] | (score < worst[group]))

    def spread(self, n: int) -> Results | None:
        """Up to `n` kept rows, round-robin over classes: every class's best before any
        class's second best, ties by score."""
        if self.results is None:
            return None
        order, rank = rank_in_group(self.results.classes[:, 0], self.score)
        chosen = order[np.lexsort((self.score[order], rank))][:n]
        return take(self.results, chosen)

    def by_class(self) -> dict[int, Results]:
        """The kept rows of each predicted class, in score order."""
        if self.results is None:
            return {}
        order, _ = rank_in_group(self.results.classes[:, 0], self.score)
        ordered = take(self.results, order)  # once: each class is then a slice (views)
        top = ordered.classes[:, 0]
        bounds = np.flatnonzero(np.r_[True, top[1:] != top[:-1], True])
        return {int(top[a]): take(ordered, slice(a, b))
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)}
