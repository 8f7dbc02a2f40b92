"""File checksums, hashed through memory-mapped windows so that large shards and checkpoints
never sit in memory."""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path
from typing import BinaryIO

import xxhash

SHARD_DIGEST = "xxh3_128"  # shards from store format 4 on: hashed at memory speed
DIGESTS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}  # sha256: older shards
WINDOW = 16 << 20  # bytes mapped at a time (mapped pages count in the process's RSS)


def file_sha256(file: Path | str | BinaryIO) -> str:
    """Hex sha256 of a file, given by path or as a binary file open for reading."""
    return file_digest(file, "sha256").removeprefix("sha256:")


def file_digest(file: Path | str | BinaryIO, algorithm: str = SHARD_DIGEST) -> str:
    """"<algorithm>:<hex>" of a file's bytes (one of `DIGESTS`), given by path or as a binary
    file open for reading. The file is hashed through memory maps of `WINDOW` bytes, so a
    shard just written is hashed straight from the page cache, without copying it (a tenth of
    the cost of reading it back into a buffer and taking its sha256)."""
    if isinstance(file, (str, Path)):
        with open(file, "rb") as f:
            return file_digest(f, algorithm)
    digest = DIGESTS[algorithm]()
    size = file.seek(0, 2)
    for at in range(0, size, WINDOW):
        with mmap.mmap(file.fileno(), min(WINDOW, size - at), offset=at,
                       access=mmap.ACCESS_READ) as view:
            digest.update(view)
    return f"{algorithm}:{digest.hexdigest()}"
