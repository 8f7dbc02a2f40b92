"""The local engine: read parts ahead in a thread, compute here, write in another thread."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import faiss
import torch

from ...rows import Rows
from ...util.progress import progress
from .evidence import KeyIds
from .journal import Journal
from .output import Results
from .parts import classify_rows, part_ranges, query_rows, read_part, write_part


def use_all_cores() -> None:
    """Let torch and faiss use every core of this machine."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    faiss.omp_set_num_threads(cores)


def read_ahead(store, todo: list[tuple[int, int, int]], split: str | None,
               depth: int = 2) -> Iterator[tuple[int, int, int, Rows]]:
    """(index, start, stop, rows) of each part in `todo`, read up to `depth` parts ahead."""
    with ThreadPoolExecutor(1, thread_name_prefix="reader") as reader:
        window: deque[tuple[int, int, int, Future]] = deque()
        for index, start, stop in todo:
            window.append((index, start, stop,
                           reader.submit(read_part, store, start, stop, split)))
            if len(window) > depth:
                index, start, stop, rows = window.popleft()
                yield index, start, stop, rows.result()
        while window:
            index, start, stop, rows = window.popleft()
            yield index, start, stop, rows.result()


def run_local(cache, store, out: Path, journal: Journal, show_progress: bool = True) -> None:
    """Classify the parts `journal` lacks: read ahead, compute here, write in a thread."""
    use_all_cores()
    options = journal.spec.options
    todo = [r for r in part_ranges(journal.store_rows, options.batch_size)
            if r[0] not in journal.parts]
    pending: deque[Future] = deque()
    key_ids = KeyIds.of(cache) if options.evidence and todo else None
    with progress(query_rows(store, options.split), "classify",
                  disable=not show_progress) as bar, \
            ThreadPoolExecutor(1, thread_name_prefix="writer") as writer:
        bar.update(sum(p.rows for p in journal.parts.values()))
        for index, start, stop, rows in read_ahead(store, todo, options.split):
            if not len(rows):
                continue
            results = classify_rows(cache, rows, options, key_ids)
            pending.append(writer.submit(_write_and_commit, out, journal, index, start, stop,
                                         results))
            while len(pending) > 2:
                pending.popleft().result()
            bar.update(len(rows))
        for future in pending:
            future.result()


def _write_and_commit(out: Path, journal: Journal, index: int, start: int, stop: int,
                      results: Results) -> None:
    journal.commit(out, write_part(out, journal.spec, index, start, stop, results))


