"""The store-level id index: the 64-bit hash and row id of every stored id, sorted by hash,
in one file named (with its sha256) by the manifest.

An append looks its ids up here and opens only the shards of the (rare) hash hits to confirm
them, so its cost does not grow with the number of shards. The file is replaced atomically
with every append (16 bytes per stored row); a missing or damaged index is rebuilt from the
shards' ids, so it never decides alone that an id is new.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from ..util.atomic import atomic_path
from .manifest import IdIndexInfo, Manifest

log = logging.getLogger(__name__)

ENTRY = np.dtype([("hash", "<u8"), ("row", "<i8")])
PREFIX = "ids-"
SUFFIX = ".idx"


def load(store_dir: Path, manifest: Manifest) -> np.ndarray | None:
    """The manifest's index when it is present, intact and covers every row, else None."""
    info = manifest.id_index
    if info is None or info.rows != manifest.rows:
        return None
    try:
        data = (store_dir / info.name).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != info.sha256 or len(data) != info.rows * ENTRY.itemsize:
        log.warning("the id index %s of store %s is damaged: rebuilding it from the shards",
                    info.name, store_dir)
        return None
    return np.frombuffer(data, dtype=ENTRY)


def build(hashes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """An index of the given id hashes and their row ids."""
    order = np.lexsort((rows, hashes))  # by hash, then row (two integer sorts, not records)
    index = np.empty(len(hashes), dtype=ENTRY)
    index["hash"], index["row"] = hashes[order], rows[order]
    return index


def candidates(index: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query position, stored row id) of every index entry whose hash equals a query's."""
    lo = np.searchsorted(index["hash"], hashes, "left")
    hits = np.searchsorted(index["hash"], hashes, "right") - lo
    query = np.repeat(np.arange(len(hashes)), hits)
    pos = np.arange(len(query)) - np.repeat(np.cumsum(hits) - hits, hits) + np.repeat(lo, hits)
    return query, index["row"][pos]


def merged(index: np.ndarray, hashes: np.ndarray, first_row_id: int) -> np.ndarray:
    """`index` plus ids with `hashes` stored at row ids `first_row_id, ...` (still sorted)."""
    new = build(hashes, np.arange(first_row_id, first_row_id + len(hashes), dtype=np.int64))
    at = np.searchsorted(index["hash"], new["hash"], "right")
    return np.insert(index, at, new)


def name(generation: int) -> str:
    """The file name of the index of the manifest of `generation`."""
    return f"{PREFIX}{generation:012d}{SUFFIX}"


def write(store_dir: Path, index: np.ndarray, generation: int) -> IdIndexInfo:
    """Write `index` as a new file (atomic) for the manifest of `generation`."""
    data = index.tobytes()
    with atomic_path(store_dir / name(generation)) as tmp:
        tmp.write_bytes(data)
    return IdIndexInfo(name=name(generation), rows=len(index),
                       sha256=hashlib.sha256(data).hexdigest())
