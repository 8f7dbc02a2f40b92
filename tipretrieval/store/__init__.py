"""The feature store: a manifest plus immutable HDF5 shards of CLIP features, written
crash-safely under a lock and read in bounded memory.

Owns the on-disk store format (`manifest`, `shard`, `float16`), reading (`reader`, with worker
processes from `workers`), append checks (`validate`), the `Store` API (`store`) and importing
feature files (`ingest`). `Store` is imported on first use, so a reader worker process starts
without the writing side.
May import: the contracts (`errors`, `provenance`, `rows`) and `util`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Store"]


def __getattr__(name: str) -> Any:
    if name == "Store":
        from .store import Store  # start-up time: reader workers import no writing side
        return Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
