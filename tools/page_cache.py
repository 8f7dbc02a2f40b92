"""The page cache state of files, for benchmarks that compare cold or warm reads fairly."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def drop_cache(files: list[Path]) -> None:
    """Evict `files` from the page cache: fsync each first (POSIX_FADV_DONTNEED drops only
    clean pages), then fadvise; the system-wide cache is left alone for other users."""
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(files: list[Path]) -> None:
    """Read `files` once so that they are in the page cache."""
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass


def resident(files: list[Path]) -> float | None:
    """The fraction of the bytes of `files` in the page cache (`fincore`; None without it)."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES",
                          *map(str, files)], check=True, capture_output=True, text=True).stdout
    return sum(int(v) for v in out.split()) / sum(p.stat().st_size for p in files)
