"""Test helper for real concurrent processes: wait until each one waits on a lock file."""

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
