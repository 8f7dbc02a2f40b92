"""The store's writer lock: an flock on `STORE/.lock`, re-entrant within a thread.

The lock file may be removed by a writer that created a store and then had to discard it; a
process that was waiting on the removed file then holds a lock nobody else sees, so after
every acquisition the locked file must still be the one at the path, else it tries again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import StoreLocked

LOCK_NAME = ".lock"
LOCK_TIMEOUT = 60.0  # default seconds a writer waits for another before StoreLocked
_POLL_S = 0.05

_held: dict[str, int] = {}  # lock path -> depth, for the thread that holds it
_guards: dict[str, threading.RLock] = {}
_guards_lock = threading.Lock()


def _guard(key: str) -> threading.RLock:
    with _guards_lock:
        return _guards.setdefault(key, threading.RLock())


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _acquire(path: Path, timeout: float) -> int:
    """An fd holding an exclusive flock on `path` (created, with its folder, when missing)."""
    deadline = time.monotonic() + timeout
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed between mkdir and open: retry
            continue
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise StoreLocked(
                        f"store {path.parent} is locked by another writer for over {timeout:g} s",
                        "wait for the other import/encode to finish and retry") from None
                time.sleep(_POLL_S)
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the file was removed (a discarded store) while we waited: lock anew


@contextlib.contextmanager
def writer_lock(store_dir: Path, timeout: float) -> Iterator[None]:
    """Hold the writer lock of `store_dir`; nested use in the same thread is a no-op."""
    path = Path(store_dir) / LOCK_NAME
    key = os.path.abspath(path)
    guard = _guard(key)
    if not guard.acquire(timeout=timeout):
        raise StoreLocked(f"store {store_dir} is locked by another thread for over {timeout:g} s",
                          "wait for it to finish and retry")
    try:
        if _held.get(key):
            _held[key] += 1
            try:
                yield
            finally:
                _held[key] -= 1
            return
        fd = _acquire(path, timeout)
        _held[key] = 1
        try:
            yield
        finally:
            _held[key] = 0
            os.close(fd)  # closing the only fd releases the flock
    finally:
        guard.release()


def remove_lock_file(store_dir: Path) -> None:
    """Remove the lock file (only while holding the lock, when discarding a new store)."""
    (Path(store_dir) / LOCK_NAME).unlink(missing_ok=True)
