"""Store labels -> cache class indices: a cache and a store name the same classes by name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import BadInput


def class_map(cache_classes: Sequence[str], store_classes: Sequence[str]) -> np.ndarray:
    """For each store class index, the cache's index of the same class name (-1 if absent)."""
    where = {name: i for i, name in enumerate(cache_classes)}
    return np.array([where.get(name, -1) for name in store_classes], dtype=np.int64)


def relabel(mapping: np.ndarray, labels: np.ndarray, store_classes: Sequence[str],
            split: str) -> np.ndarray:
    """Store labels -> cache class indices via `class_map`; BadInput for a class not cached."""
    out = mapping[labels]
    if (out < 0).any():
        name = store_classes[int(labels[out < 0][0])]
        raise BadInput(f"'{split}' rows of class {name!r}, which the cache lacks",
                       "add shots of it (add-shots) or use rows of the cache's classes")
    return out
