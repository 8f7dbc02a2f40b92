"""`TipAdapter`: text classifier + cache keys + alpha/beta -> logits, in every method and mode.

Methods: "zero-shot" = 100 * x W^T; "cache" = alpha * A(x); "tip" = their sum, added in the
official float32 order `clip_logits + cache_logits * alpha`; "gda" = 100 * x W^T +
gda_alpha * (x W_g^T + b) (`gda`; without text the GDA term alone). A(x) weighs each class by
`weighting` ("balanced" by default, "sum" = the literal official formula; see `affinity`).
Modes: "exact" sums A(x) over all keys; "retrieval" uses each query's top-k keys from a
`KeyIndex` plus the mean-field tail, then recomputes exactly the cache term of the `rescore`
best classes of the resulting logits (see `affinity`). Keys are held sorted by class; `keys`,
`labels` and `row_ids` are exposed in that order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from ..errors import BadInput, TipError
from . import affinity, gda
from .evidence import top_keys
from .index import KeyIndex

Method = Literal["zero-shot", "cache", "tip", "gda"]
Mode = Literal["exact", "retrieval"]
METHODS: tuple[str, ...] = get_args(Method)
MODES: tuple[str, ...] = get_args(Mode)
RESCORE = 4


@dataclass
class Predictions:
    """Top-k classes per query, best first, with their softmax probabilities."""

    classes: np.ndarray  # (B, k) int64
    probs: np.ndarray    # (B, k) float32


def _top_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, best first, ties to the lowest index.

    A partial partition plus a sort of k candidates (C log C -> C + k log k per row); rows where
    the k-th value is tied with a value outside the candidates fall back to a stable full sort.
    """
    neg = -logits
    part = np.argpartition(neg, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(neg, part, axis=1)
    classes = np.take_along_axis(part, np.lexsort((part, vals), axis=1), axis=1)
    crossing = np.flatnonzero((neg <= vals.max(axis=1, keepdims=True)).sum(axis=1) > k)
    if crossing.size:
        classes[crossing] = np.argsort(neg[crossing], axis=1, kind="stable")[:, :k]
    return classes


def top_k(logits: np.ndarray, k: int) -> Predictions:
    """The k highest-scoring classes (ties to the lowest index) with softmax probabilities."""
    logits = np.asarray(logits, dtype=np.float32)
    k = min(int(k), logits.shape[1])
    if k < 1:
        raise BadInput(f"top-k is {k}: ask for at least one class")
    classes = _top_indices(logits, k)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    return Predictions(classes.astype(np.int64), np.take_along_axis(probs, classes, axis=1))


class TipAdapter:
    """Tip-Adapter over keys (M, D) with labels (M,) in [0, num_classes) and text (C, D).

    `gda_stats` are the GDA statistics (default: fitted on the keys when method "gda" is used).
    """

    def __init__(self, keys: np.ndarray, labels: np.ndarray, num_classes: int,
                 text: np.ndarray | None = None, alpha: float = 1.0, beta: float = 1.0,
                 index: KeyIndex | Callable[[], KeyIndex] | None = None,
                 row_ids: np.ndarray | None = None, *, weighting: str = "balanced",
                 gda_stats: gda.GDAStats | None = None, gda_alpha: float = 1.0):
        self._sk = affinity.SortedKeys.build(keys, labels, num_classes, weighting)
        self.dim = self._sk.keys.shape[1]
        if text is not None:
            text = np.ascontiguousarray(text, dtype=np.float32)
            if text.shape != (num_classes, self.dim):
                raise BadInput(f"text classifier has shape {text.shape}, expected "
                               f"({num_classes}, {self.dim}): one row per class")
        self.text = text
        self.num_classes = num_classes
        self.alpha, self.beta = float(alpha), float(beta)
        n = len(self._sk.keys)
        ids = np.arange(n, dtype=np.int64) if row_ids is None else np.asarray(row_ids, np.int64)
        if ids.shape != (n,):
            raise BadInput(f"{ids.shape[0]} row ids for {n} keys: give one row id per key")
        self.row_ids = ids[self._sk.order]
        self._id_order = np.argsort(self.row_ids, kind="stable")
        self._sorted_ids = self.row_ids[self._id_order]
        self._index = index
        self.weighting = weighting
        self.gda_alpha = float(gda_alpha)
        if gda_stats is not None and gda_stats.sums.shape != (num_classes, self.dim):
            raise BadInput(f"GDA statistics cover {gda_stats.sums.shape} (classes, dim), expected "
                           f"({num_classes}, {self.dim}): refit them on this cache's shots")
        self._gda_stats = gda_stats
        self._gda_model: gda.GDAModel | None = None

    @property
    def keys(self) -> np.ndarray:
        """(M, D) float32 keys, sorted by class."""
        return self._sk.keys

    @property
    def labels(self) -> np.ndarray:
        """(M,) int64 key labels, non-decreasing."""
        return self._sk.labels

    @property
    def weights(self) -> np.ndarray:
        """(C,) float32 multiplier of each class's cache term (`weighting`)."""
        return self._sk.weights

    @property
    def gda_stats(self) -> gda.GDAStats:
        """The GDA statistics (fitted on the keys when none were given)."""
        if self._gda_stats is None:
            self._gda_stats = gda.GDAStats.fit(self.keys, self.labels, self.num_classes)
        return self._gda_stats

    def gda_term(self, x: np.ndarray) -> np.ndarray:
        """x W_g^T + b (B, C) float32, the GDA discriminant."""
        if self._gda_model is None:
            self._gda_model = self.gda_stats.model()
        return self._gda_model.logits(self._queries(x))

    @property
    def index(self) -> KeyIndex:
        """The key index for retrieval mode: built (exact, flat) or fetched on first use."""
        if self._index is None:
            self._index = KeyIndex.build(self.keys, self.row_ids)
        elif callable(self._index):  # a loader: exact mode never needs the index
            self._index = self._index()
        return self._index

    def logits(self, x: np.ndarray, *, method: str = "tip", mode: str = "exact",
               k: int = 64, rescore: int = RESCORE) -> np.ndarray:
        """(B, C) float32 logits of queries x (B, D) for `method` in `mode`.

        Retrieval mode uses the top `k` keys and the tail estimate, then the exact cache term
        for the `rescore` highest-scoring classes of each query (0 = estimate only).
        """
        if method not in METHODS:
            raise BadInput(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        if mode not in MODES:
            raise BadInput(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        x = self._queries(x)
        if method == "zero-shot":
            return self.text_logits(x)
        if method == "gda":
            return self._gda_logits(x, None)
        text = self.text_logits(x) if method == "tip" else np.float32(0)
        cache = self.cache_term(x, mode=mode, k=k)
        r = min(int(rescore), self.num_classes) if mode == "retrieval" else 0
        if r > 0:
            scores = text + cache * np.float32(self.alpha)
            best = np.argpartition(-scores, r - 1, axis=1)[:, :r]
            affinity.rescore_(x, self._sk, self.beta, cache, best)
        return text + cache * np.float32(self.alpha)

    def logits_by_method(self, x: np.ndarray, methods, *, mode: str = "exact",
                         k: int = 64) -> dict[str, np.ndarray]:
        """`logits` of several methods; exact mode computes the text and cache terms once."""
        if mode != "exact":
            return {m: self.logits(x, method=m, mode=mode, k=k) for m in methods}
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise BadInput(f"unknown method {unknown.pop()!r}: use one of {', '.join(METHODS)}")
        x = self._queries(x)
        wanted = set(methods)
        needs_text = {"zero-shot", "tip"} & wanted or ("gda" in wanted and self.text is not None)
        text = self.text_logits(x) if needs_text else None
        cache = self.cache_term(x) if {"cache", "tip"} & wanted else None
        alpha = np.float32(self.alpha)
        pieces = {"zero-shot": lambda: text, "cache": lambda: np.float32(0) + cache * alpha,
                  "tip": lambda: text + cache * alpha, "gda": lambda: self._gda_logits(x, text)}
        return {m: pieces[m]() for m in methods}

    def _gda_logits(self, x: np.ndarray, text: np.ndarray | None) -> np.ndarray:
        """Method "gda": text logits (computed when not given) + gda_alpha * the GDA term."""
        if text is None and self.text is not None:
            text = self.text_logits(x)
        return gda.combine(text, self.gda_term(x), self.gda_alpha)

    def classify(self, x: np.ndarray, top: int = 5, **how) -> Predictions:
        """Top-`top` classes and probabilities; `how` is passed to `logits`."""
        return top_k(self.logits(x, **how), top)

    def text_logits(self, x: np.ndarray) -> np.ndarray:
        """100 * x W^T (B, C) float32; needs a text classifier."""
        if self.text is None:
            raise BadInput("this cache has no text classifier", "use method 'cache' or 'gda', or "
                           "build the cache with `text=` FILE or `templates=` NAME")
        q = torch.from_numpy(self._queries(x))
        return (torch.mm(q, torch.from_numpy(self.text).t()) * 100.0).numpy()

    def cache_term(self, x: np.ndarray, *, mode: str = "exact", k: int = 64,
                   tail: bool = True) -> np.ndarray:
        """A(x) (B, C) float32 at this adapter's beta; retrieval mode uses the top `k` keys."""
        x = self._queries(x)
        if mode == "exact":
            return affinity.exact(x, self._sk, self.beta)
        if k < 1:
            raise BadInput(f"k is {k}: retrieve at least one key per query")
        sims, ids = self.index.search(x, min(int(k), max(1, self.index.ntotal)))
        pos = self._positions(ids)
        if not self.index.exact_sims:  # quantised codes: score the retrieved keys exactly
            sims = affinity.retrieved_sims(x, self._sk, pos)
        return affinity.retrieval(x, self._sk, self.beta, pos, sims, tail=tail)

    def evidence(self, x: np.ndarray, classes: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Row ids (B, n) int64 and similarities (B, n) float32 of the n keys of class
        `classes[b]` contributing most to x[b]'s cache term, best first (-1 / NaN padding)."""
        found = top_keys(self._queries(x), self._sk, classes, n)
        ids = np.where(found.positions >= 0, self.row_ids[found.positions], -1)
        return ids.astype(np.int64), found.sims

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Sorted-key positions of index row ids (-1 stays -1); unknown ids are an error."""
        valid = ids >= 0
        flat = ids.reshape(-1)
        needles = np.argsort(flat)  # sorted needles, sorted haystack: ~15x faster at 1M keys
        slot = np.empty_like(flat)
        slot[needles] = np.searchsorted(self._sorted_ids, flat[needles])
        pos = self._id_order[np.minimum(slot, len(self.row_ids) - 1).reshape(ids.shape)]
        if np.any(valid & (self.row_ids[pos] != ids)):
            raise TipError("the key index holds row ids this cache does not have: "
                           "rebuild the index from the cache keys")
        return np.where(valid, pos, -1)

    def _queries(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise BadInput(f"queries have shape {x.shape}, expected (n, {self.dim}): "
                           "pass features from the cache's encoder")
        return np.ascontiguousarray(x)
