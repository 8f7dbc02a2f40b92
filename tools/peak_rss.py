"""Peak resident memory of this process (and of its children), for the benchmarks' child
processes."""

from __future__ import annotations

import resource
import threading
from pathlib import Path

import psutil


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


class TreePeak:
    """The peak, sampled every `every` seconds in a thread, of the summed PSS (MiB) of this
    process and its children: a job's memory when it runs helper processes (shared memory
    counted once), which no single process's VmHWM shows. Use as a context manager.
    Each sample walks the page tables of every process (smaps_rollup): at 0.1 s that took 8%
    of a 2-core machine's CPU during a 1 GB import, so the default samples once a second
    (the memory of a streaming job is a plateau: its buffers and index, not short spikes)."""

    def __init__(self, every: float = 1.0):
        self.mib = 0.0
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self._every):
            try:
                pss = sum(p.memory_full_info().pss for p in [me, *me.children(recursive=True)])
            except psutil.Error:  # a child ended while it was read
                continue
            self.mib = max(self.mib, pss / 2**20)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
