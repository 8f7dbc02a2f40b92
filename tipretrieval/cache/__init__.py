"""Caches: the few-shot keys of a store, their labels, class names and text classifier, kept
in a directory of generations and served through the method's adapter.

Owns the `Cache` API (`cache`), the cache directory format (`files`), where a text classifier
comes from (`text`) and shot sampling (`shots`).
May import: the contracts, `util`, `store`, `encode` and `method`; never `jobs`, `demo`, `cli`.
"""

from .cache import Cache

__all__ = ["Cache"]
