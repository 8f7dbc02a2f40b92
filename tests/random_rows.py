"""Deterministic random rows for store tests: unit features, labels in -1..classes-1."""

from __future__ import annotations

import numpy as np

from tipretrieval.rows import Rows


def random_rows(n: int, seed: int, *, dim: int, classes: int, prefix: str = "r",
                views: int = 0, sources: bool = False) -> Rows:
    """Rows `{prefix}{seed}-{i}` with train/val splits; views and sources when asked."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    v = rng.standard_normal((n, views, dim)).astype(np.float32) if views else None
    return Rows.make(
        ids=[f"{prefix}{seed}-{i}" for i in range(n)],
        features=x / np.linalg.norm(x, axis=1)[:, None],
        labels=rng.integers(-1, classes, n), splits=rng.choice(["train", "val"], n),
        sources=[f"/img/{seed}/{i}.jpg" for i in range(n)] if sources else None,
        views=None if v is None else v / np.linalg.norm(v, axis=-1, keepdims=True),
    )
