"""Test helpers for real concurrent processes: wait until each one waits on a lock file, or
until an import is part way through."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def _has_open(pid: int, path: Path) -> bool:
    try:
        fds = list((Path("/proc") / str(pid) / "fd").iterdir())
        return any(os.readlink(fd) == str(path) for fd in fds)
    except FileNotFoundError:  # the process exited, or closed an fd while we looked
        return False


def wait_until_all_open(procs: list[subprocess.Popen], path: Path, timeout: float = 90) -> None:
    """Return once every process has `path` open (Linux /proc), e.g. to wait on its lock;
    fails with their output when one exits first or `timeout` passes."""
    path = Path(path).resolve()
    deadline = time.monotonic() + timeout
    while not all(_has_open(p.pid, path) for p in procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs]
        time.sleep(0.05)


def wait_for_shards(proc: subprocess.Popen, store: Path, count: int,
                    timeout: float = 120) -> None:
    """Return once `store` holds `count` shard files, or `proc` has ended, or `timeout`
    passed (a kill test then checks that the kill landed mid-import)."""
    shards = Path(store) / "shards"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.h5"))) >= count:
            return
        time.sleep(0.02)
