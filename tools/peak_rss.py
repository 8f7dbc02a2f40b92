"""Peak resident memory of this process, for the benchmarks' child processes."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak RSS (MiB) of this process since its exec: VmHWM, not ru_maxrss, which keeps the
    RSS of the parent the child was forked from (a benchmark parent holding a 1 GB memory
    map made every child report at least 1.2 GB)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
