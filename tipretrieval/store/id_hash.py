"""The 64-bit id hashes of a store: its shards' hash tables and its id index hold them.

A store keeps one algorithm for life (`Manifest.id_hash`): xxh3_64 for stores made from
manifest format 4 on, blake2b_8 (the first 8 bytes of blake2b) for older ones. xxh3 is about
six times as fast per id (hashlib builds a hash object per call), which was a tenth of an
import's CPU time. Equal ids hash equal; a hash match is always confirmed on the ids.
"""

from __future__ import annotations

import functools
import hashlib
import operator

import numpy as np
import xxhash

NEW = "xxh3_64"  # the algorithm of new stores
OLD = "blake2b_8"  # the algorithm of stores before manifest format 4

_BLAKE2B_8 = functools.partial(hashlib.blake2b, digest_size=8)
_DIGEST = operator.methodcaller("digest")


def _blake2b_8(ids: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(map(_DIGEST, map(_BLAKE2B_8, ids))), "<u8").astype(np.uint64)


def _xxh3_64(ids: list[bytes]) -> np.ndarray:
    return np.fromiter(map(xxhash.xxh3_64_intdigest, ids), np.uint64, len(ids))


ALGORITHMS = {NEW: _xxh3_64, OLD: _blake2b_8}


def id_hashes(encoded: np.ndarray, algorithm: str) -> np.ndarray:
    """The hash (uint64) of every encoded id (an object array of UTF-8 bytes) by `algorithm`
    (a key of ALGORITHMS). The loops run in C: a map over the ids, not a comprehension."""
    return ALGORITHMS[algorithm](encoded.tolist())
