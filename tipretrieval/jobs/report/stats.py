"""Whole-output figures of a report, accumulated part by part: rows per predicted class, the
top-1 confidence histogram and, for labelled rows, per-class accuracy and confused pairs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..classify.output import Results

BINS = 20  # confidence histogram bins over [0, 1]


@dataclass
class Stats:
    """Counts over every row of an output; `true_*` only over rows with a known label."""

    num_classes: int
    rows: int = 0
    predicted: np.ndarray = None  # (C,) rows per predicted class
    confidence_sum: np.ndarray = None  # (C,) summed top-1 probability per predicted class
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    labelled: int = 0
    true_rows: np.ndarray = None  # (C,) labelled rows per true class
    true_hits: np.ndarray = None  # (C,) of those, predicted right (top-1)
    confused: Counter = field(default_factory=Counter)  # (true, predicted) -> rows

    def __post_init__(self) -> None:
        c = self.num_classes
        for name in ("predicted", "true_rows", "true_hits"):
            setattr(self, name, np.zeros(c, dtype=np.int64))
        self.confidence_sum = np.zeros(c, dtype=np.float64)

    def add(self, part: Results, labels: np.ndarray | None = None) -> None:
        """Count one part; `labels` (class indices, -1 unknown) per row when known."""
        top, p1 = part.classes[:, 0], part.probs[:, 0].astype(np.float64)
        self.rows += len(part)
        self.predicted += np.bincount(top, minlength=self.num_classes)
        self.confidence_sum += np.bincount(top, weights=p1, minlength=self.num_classes)
        self.histogram += np.histogram(p1, bins=BINS, range=(0.0, 1.0))[0]
        if labels is None:
            return
        known = labels >= 0
        truth, guess = labels[known], top[known]
        self.labelled += int(known.sum())
        self.true_rows += np.bincount(truth, minlength=self.num_classes)
        self.true_hits += np.bincount(truth[truth == guess], minlength=self.num_classes)
        wrong = truth != guess
        pairs, counts = np.unique(truth[wrong] * self.num_classes + guess[wrong],
                                  return_counts=True)
        self.confused.update(dict(zip(pairs.tolist(), counts.tolist(), strict=True)))

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy (%) over the labelled rows."""
        return 100.0 * float(self.true_hits.sum()) / max(1, self.labelled)

    def top_confusions(self, n: int) -> list[tuple[int, int, int]]:
        """The `n` most frequent (true class, predicted class, rows) mistakes."""
        return [(code // self.num_classes, code % self.num_classes, count)
                for code, count in sorted(self.confused.items(), key=lambda kv: (-kv[1], kv[0]))
                [:n]]

    def accuracy_by_shots(self, shots: np.ndarray) -> list[tuple[str, int, int, float]]:
        """(shots range, classes, labelled rows, accuracy %) per power-of-two range of the
        number of cache keys per class (1, 2, 3-4, 5-8, ...), over classes with labelled rows."""
        out = []
        has_rows = self.true_rows > 0
        bucket = np.where(shots > 0, np.ceil(np.log2(np.maximum(shots, 1))), -1).astype(int)
        for b in np.unique(bucket[has_rows]):
            members = has_rows & (bucket == b)
            lo, hi = (0, 0) if b < 0 else (2 ** (b - 1) + 1 if b > 0 else 1, 2 ** b)
            name = str(hi) if lo == hi else f"{lo}-{hi}"
            rows = int(self.true_rows[members].sum())
            out.append((name, int(members.sum()), rows,
                        100.0 * float(self.true_hits[members].sum()) / rows))
        return out
