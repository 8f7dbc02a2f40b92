"""glibc's malloc told to give freed large blocks back, for jobs whose memory must stay bounded.

glibc serves blocks of 128 KB or more with their own memory map and unmaps them when freed,
but after such a free it raises that threshold to the freed size (up to 32 MB), so later
blocks of that size come from its heaps, and a heap keeps what is freed below its top. A
streaming import allocates and frees arrays of a chunk's size (ids, hashes, offsets: about
1 MB each at 131,072 rows) in two threads, each with its own heap: at 10M rows that kept about
100 MB more resident. Setting the threshold explicitly turns that adjustment off."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_mallopt = getattr(_libc, "mallopt", None)  # glibc only


def return_freed_blocks(threshold: int = 128 << 10) -> bool:
    """Have blocks of `threshold` bytes or more mapped on their own and unmapped when freed,
    from now on in this process (glibc's default threshold, fixed); False where the C library
    has no `mallopt` (nothing changes)."""
    return _mallopt is not None and _mallopt(_M_MMAP_THRESHOLD, threshold) == 1
