"""Evidence: the cache keys that contributed most to a query's chosen class.

Key j adds `exp(-beta * (1 - x . k_j))` to the cache term of its class (times that class's
weight, when classes are weighted: a constant within the class). The term increases with
x . k_j, so the N keys contributing most to class c are its N keys most similar to x, whatever
beta or the weight. They are found exactly over the class's keys (a contiguous run of the
class-sorted keys), in every mode, so retrieval mode reports the same evidence as exact mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BadInput
from .affinity import BLOCK_BYTES, SortedKeys


@dataclass(frozen=True)
class KeyEvidence:
    """Per query, the N keys of its class most similar to it, best first; padded."""

    positions: np.ndarray  # (B, N) int64 sorted-key positions, -1 where the class has < N keys
    sims: np.ndarray       # (B, N) float32 x . k, NaN where padded


def top_keys(x: np.ndarray, sk: SortedKeys, classes: np.ndarray, n: int) -> KeyEvidence:
    """The `n` keys of class `classes[b]` most similar to x[b] (ties to the lower position)."""
    if n < 1:
        raise BadInput(f"evidence is {n}: ask for at least one key per row")
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    b = classes.shape[0]
    positions = np.full((b, n), -1, dtype=np.int64)
    sims = np.full((b, n), np.nan, dtype=np.float32)
    q = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    keys = torch.from_numpy(sk.keys)
    for c in np.unique(classes):
        k0, k1 = int(sk.offsets[c]), int(sk.offsets[c + 1])
        if k1 == k0:
            continue
        who = np.flatnonzero(classes == c)
        take = min(n, k1 - k0)
        step = max(1, BLOCK_BYTES // (4 * (k1 - k0)))
        for s in range(0, len(who), step):
            rows = who[s:s + step]
            got = torch.mm(q[rows], keys[k0:k1].t()).numpy()
            best = np.argsort(-got, axis=1, kind="stable")[:, :take]
            positions[rows, :take] = best + k0
            sims[rows, :take] = np.take_along_axis(got, best, axis=1)
    return KeyEvidence(positions, sims)
