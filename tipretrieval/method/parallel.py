"""Many small matrix products at once: a thread per core, each product single-threaded.

Per-list (IVF search) and per-class (rescoring) products are small; split over every core by
torch's OpenMP pool, each one waits at a barrier for its slowest thread, which stalls badly
whenever the cores are shared. Running them on a pool of Python threads (torch releases the
GIL) with torch single-threaded keeps every core busy without barriers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch


@contextlib.contextmanager
def one_thread_per_product() -> Iterator[int]:
    """Run torch single-threaded inside, yielding the thread count it had before."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def run_all(work: Callable[[object], None], items: Iterable) -> None:
    """`work(item)` for every item on as many threads as torch had (each single-threaded)."""
    with one_thread_per_product() as workers, ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(work, items):  # re-raises the first error
            pass
