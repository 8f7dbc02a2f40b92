"""Reserve disk blocks for a file before a library writes it, so that a full disk is an
ordinary OSError at the reservation instead of a failure deep inside that library (HDF5
crashes the process on a full disk)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

_KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE: allocate blocks without changing the file's size
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)  # Linux only
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def reserve(path: Path, nbytes: int) -> bool:
    """Allocate `nbytes` of disk for the file at `path`, keeping its size; False where the
    system or file system cannot (then nothing is reserved). OSError (ENOSPC) on a full disk."""
    if _fallocate is None:
        return False
    fd = os.open(path, os.O_WRONLY)
    try:
        if _fallocate(fd, _KEEP_SIZE, 0, nbytes) == 0:
            return True
        err = ctypes.get_errno()
    finally:
        os.close(fd)
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(path))


def release_unused(path: Path) -> None:
    """Free the reserved blocks past the end of the file at `path` (truncate to its size)."""
    os.truncate(path, os.path.getsize(path))
