"""Caches: the few-shot keys of a store, their labels, class names and text classifier, kept
in a directory of generations and served through the method's adapter.

Owns the `Cache` API (`cache`), its contents as immutable values (`state`), the cache
directory format (`files`), where a text classifier comes from (`text`), shot sampling and
selection (`shots`) and mapping store labels to cache classes (`labels`).
May import: the contracts, `util`, `store`, `encode` and `method`; never `jobs`, `demo`, `cli`.
"""

from .cache import Cache

__all__ = ["Cache"]
