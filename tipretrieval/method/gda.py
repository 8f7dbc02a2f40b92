"""GDA (Wang et al., ICLR 2024): training-free Gaussian discriminant analysis on CLIP features.

Fit on N labelled features: class means mu_c (not renormalised), one covariance Sigma of the
class-centred features (`torch.cov` convention, divided by N - 1), precision
P = D * pinv((N - 1) Sigma + trace(Sigma) I), W_g = mu P, b_c = log(1/C) - 0.5 W_g[c] . mu_c.
Logits: 100 x W^T + alpha (x W_g^T + b) with a text classifier W, else x W_g^T + b (linear
discriminant analysis). Alpha is chosen on val from the paper's list (first maximum).

`GDAStats` holds sufficient statistics instead of the features: per-class sums and counts and
the scatter sum_i x_i x_i^T (float64), since (N - 1) Sigma = scatter - sum_c s_c s_c^T / n_c.
Adding or removing shots updates them exactly, without refitting from the features. A class
with no features has no GDA term (0), as a class with no keys has no cache term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BadInput

ALPHAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
DEGENERATE = 1e-9  # within-class scatter below this fraction of the total is rounding noise


@dataclass(frozen=True)
class GDAModel:
    """The fitted discriminant: logits x W^T + b."""

    weights: np.ndarray  # (C, D) float32
    bias: np.ndarray     # (C,) float32

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x W_g^T + b (B, C) float32 for queries x (B, D)."""
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        scores = torch.mm(x, torch.from_numpy(self.weights).t())
        return (scores + torch.from_numpy(self.bias)).numpy()


@dataclass(frozen=True)
class GDAStats:
    """Sufficient statistics of a GDA fit: class sums, class counts, total scatter."""

    sums: np.ndarray     # (C, D) float64 sum of each class's features
    counts: np.ndarray   # (C,) int64 features per class
    scatter: np.ndarray  # (D, D) float64 sum over features of x x^T

    @classmethod
    def empty(cls, num_classes: int, dim: int) -> GDAStats:
        """Statistics of no features."""
        return cls(np.zeros((num_classes, dim)), np.zeros(num_classes, np.int64),
                   np.zeros((dim, dim)))

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int) -> GDAStats:
        """Statistics of features (N, D) with labels (N,) in [0, num_classes)."""
        features = np.asarray(features)
        return cls.empty(num_classes, features.shape[-1]).add(features, labels)

    @property
    def num_classes(self) -> int:
        """C."""
        return len(self.counts)

    def add(self, features: np.ndarray, labels: np.ndarray, sign: int = 1) -> GDAStats:
        """The statistics with features (N, D) of labels (N,) added (sign -1: removed)."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        if x.ndim != 2 or x.shape[1] != self.sums.shape[1] or len(x) != len(y):
            raise BadInput(f"GDA features {x.shape} and labels {y.shape} do not match the "
                           f"statistics (dim {self.sums.shape[1]}): one label per feature row")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise BadInput(f"GDA labels must lie in [0, {self.num_classes})")
        sums = self.sums.copy()
        np.add.at(sums, y, sign * x)
        counts = self.counts + sign * np.bincount(y, minlength=self.num_classes)
        if counts.min(initial=0) < 0:
            raise BadInput("removing more GDA features than a class has: statistics mismatch")
        return GDAStats(sums, counts, self.scatter + sign * (x.T @ x))

    def remove(self, features: np.ndarray, labels: np.ndarray) -> GDAStats:
        """The statistics with features (N, D) of labels (N,) taken out."""
        return self.add(features, labels, sign=-1)

    def with_classes(self, num_classes: int) -> GDAStats:
        """The statistics over `num_classes` >= C classes (new classes empty)."""
        extra = num_classes - self.num_classes
        if extra < 0:
            raise BadInput(f"cannot shrink GDA statistics from {self.num_classes} to "
                           f"{num_classes} classes")
        return GDAStats(np.vstack([self.sums, np.zeros((extra, self.sums.shape[1]))]),
                        np.concatenate([self.counts, np.zeros(extra, np.int64)]), self.scatter)

    def model(self) -> GDAModel:
        """Fit the discriminant (float64 math, float32 result)."""
        c, d = self.sums.shape
        present = self.counts > 0
        means = np.zeros_like(self.sums)
        means[present] = self.sums[present] / self.counts[present, None]
        within = self.scatter - (means[present].T * self.counts[present]) @ means[present]
        n = int(self.counts.sum())
        if np.trace(within) <= DEGENERATE * max(np.trace(self.scatter), 1e-300):
            within = np.zeros_like(within)  # one feature per class: no within-class spread
        within = (within + within.T) / 2
        precision = d * np.linalg.pinv(within + np.trace(within) / max(n - 1, 1) * np.eye(d),
                                       hermitian=True)
        weights = means @ precision
        bias = np.log(1.0 / c) - 0.5 * np.einsum("cd,cd->c", weights, means)
        weights[~present], bias[~present] = 0.0, 0.0
        return GDAModel(weights.astype(np.float32), bias.astype(np.float32))


@dataclass(frozen=True)
class GDASearch:
    """Alpha chosen on val (first maximum) and the val accuracy % of every alpha tried."""

    alpha: float
    val_acc: float
    alphas: tuple[float, ...]
    accs: tuple[float, ...]


def combine(clip: np.ndarray | None, term: np.ndarray, alpha: float) -> np.ndarray:
    """clip + term * alpha (official float32 order, as Tip-Adapter's); without clip the term."""
    return term if clip is None else clip + term * np.float32(alpha)


def search_alpha(clip: np.ndarray | None, term: np.ndarray, val_y: np.ndarray,
                 alphas: tuple[float, ...] = ALPHAS) -> GDASearch:
    """The paper's alpha search on val, from the text logits `clip` (B, C) (None: no text) and
    the GDA term x W_g^T + b (B, C); without text alpha cannot change the argmax (kept 1)."""
    val_y = np.asarray(val_y).reshape(-1)
    if len(val_y) == 0 or len(val_y) != len(term):
        raise BadInput(f"{len(val_y)} validation labels for {len(term)} rows: give one label "
                       "per validation row (at least one)")
    alphas = tuple(alphas) if clip is not None else (1.0,)
    accs = tuple(100.0 * float(np.mean(combine(clip, term, a).argmax(axis=1) == val_y))
                 for a in alphas)
    best = int(np.argmax(accs))
    return GDASearch(alphas[best], accs[best], alphas, accs)
