"""tipretrieval: Tip-Adapter few-shot CLIP classification at production scale.

The public API is imported lazily, so `import tipretrieval` stays cheap (no torch, no FAISS):

    from tipretrieval import Store, Cache
    cache = Cache.build(Store.open("feats"), 16, text="text.npz")
    cache.save("cache")
    cache.classify(features, top_k=5)
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import BadInput, CorruptData, TipError
from .provenance import Provenance
from .rows import Rows

_LAZY = {
    "Store": "store",
    "Cache": "cache",
    "KeyIndex": "index",
    "TipAdapter": "adapter",
    "Predictions": "adapter",
    "TextClassifier": "encode.text",
    "EvalReport": "evaluate",
}

__all__ = ["BadInput", "CorruptData", "Provenance", "Rows", "TipError", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the module defining `name` on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'tipretrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
