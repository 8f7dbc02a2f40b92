"""Work one item ahead in a thread: the next item of a stream is made while the caller uses
the current one (numpy, hashlib and file I/O release the GIL, so two cores share the work)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


def prefetched(items: Iterable[T]) -> Iterator[T]:
    """The items of `items`, each made in one worker thread while the caller uses the one
    before: at most two items exist at a time. An error making an item is raised (the same
    exception) where the caller would have received that item."""
    source = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(next, source, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, source, _END)
            yield item
