"""tipretrieval: Tip-Adapter few-shot CLIP classification at production scale.

The package reads top-down as the data flow (docs/design.md has the map):
contracts (`errors`, `provenance`, `rows`, `util`) -> `store` -> `encode` -> `method` ->
`cache` -> `jobs` -> `demo` -> `cli`. The public API is imported lazily, so
`import tipretrieval` stays cheap (no torch, no FAISS):

    from tipretrieval import Store, Cache
    cache = Cache.build(Store.open("feats"), 16, text="text.npz")
    cache.save("cache")
    cache.classify(features, top_k=5)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from .errors import BadInput, CorruptData, TipError
from .provenance import Provenance
from .rows import Rows

_LAZY = {
    "Store": "store.store",
    "Cache": "cache.cache",
    "KeyIndex": "method.index",
    "TipAdapter": "method.adapter",
    "Predictions": "method.adapter",
    "TextClassifier": "encode.text",
    "EvalReport": "jobs.evaluate",
}

# Short module paths kept for users of earlier releases: each name is the same module object
# as its home in the layered package (monkeypatching either patches both).
_MOVED = {
    "synthetic": "demo.synthetic",
    "classify": "jobs.classify",
    "evaluate": "jobs.evaluate",
    "adapter": "method.adapter",
    "index": "method.index",
    "tune": "method.tune",
    "finetune": "method.finetune",
}

__all__ = ["BadInput", "CorruptData", "Provenance", "Rows", "TipError", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the module defining `name` on first use."""
    if name in _MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module 'tipretrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `tipretrieval.<old name>` to the module at its new home."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}")
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        """The module ran at its new home; give back the `__spec__` the import system replaced."""
        module.__spec__ = module.__spec__.loader_state


sys.meta_path.append(_MovedFinder())
