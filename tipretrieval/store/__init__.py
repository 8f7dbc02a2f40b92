"""The feature store: a manifest plus immutable HDF5 shards of CLIP features, written
crash-safely under a lock and read in bounded memory.

Owns the on-disk store format (`manifest`, `shard`, `float16`), reading (`reader`), append checks
(`validate`), the `Store` API (`store`) and importing feature files (`ingest`).
May import: the contracts (`errors`, `provenance`, `rows`) and `util`.
"""

from .store import Store

__all__ = ["Store"]
