"""Streaming import of embedding dumps into a store: bounded memory, resumable per file.

Each part of a dump (`dump_read`) is read `shard_rows` rows at a time; every chunk is put in
the store's dtype with its rows L2-normalised (`normalise.normalised`: rows already unit norm
are kept bit-exact, norms are computed in blocks, so no float32 copy of the chunk is made) into
one of the chunk buffers reused for the whole import (`_Ring`: two, three with a writer
process; a chunk of a .npy in the store's dtype is read straight into it and normalised in
place) and appended as one shard (the store validates it as it does every append, with the
norms and id hashes computed here), so memory is bounded by those buffers whatever the dump
size. The next chunk is read, normalised and its ids hashed in a thread (`util.prefetch`)
while the current one is written, and an error preparing a chunk is raised when the loop
reaches it, after the chunks before it were committed, as without the thread.
After each append `STORE/import-journal.json` (replaced atomically) records how many rows of
the part are committed, and a finished part is marked done, so a rerun skips finished parts
and continues a part where it stopped. A kill between an append and the journal write leaves
a chunk whose ids are already stored: the rerun finds them (`Store.existing_ids`) and skips
that chunk. Ids come from the id column/array, else `<part file>:<row>`, so every run agrees.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..provenance import Provenance
from ..rows import Rows
from ..util.atomic import write_json
from ..util.malloc import return_freed_blocks
from ..util.prefetch import prefetched
from ..util.progress import progress
from . import workers
from .dump_read import Chunk, Columns, DumpPart, Names, find_parts, part_rows, read_chunks
from .hold import Hold, hold
from .id_hash import id_hashes
from .normalise import normalised, row_norms
from .shard import IdKeys
from .shard_writer import InProcess, WriterProcess
from .store import Staged, Store

log = logging.getLogger(__name__)

JOURNAL = "import-journal.json"
SHARD_ROWS = 98_304  # 96 MB of 512-d float16: 3 ring buffers and the writer's shard image < 1 GB
WRITER_BYTES = 32 << 20  # chunks of this many bytes of features or more: a writer process


@dataclass
class DumpOptions:
    """How to read a dump and which store settings to use when creating the store."""

    columns: Columns = field(default_factory=Columns)
    shard_rows: int = SHARD_ROWS
    split: str = "train"
    classes: list[str] | None = None
    encoder: str | None = None
    weights: str | None = None
    dtype: str | None = None
    normalize: bool = True
    progress: bool = True
    prefetch: bool = True  # read and prepare the next chunk in a thread while one is written
    writer: bool | None = None  # write shards in a writer process (None: for big chunks)


@dataclass
class DumpResult:
    """What an import did: rows appended now, parts skipped as already imported."""

    store: Store
    rows: int
    parts: int
    skipped: int


def _journal(store_path: Path) -> dict:
    path = store_path / JOURNAL
    return json.loads(path.read_text()) if path.exists() else {"format": 1, "parts": {}}


def _key(part: DumpPart) -> str:
    return str(part.features.resolve())


def import_dump(source: str | Path, store_path: str | Path,
                opts: DumpOptions | None = None) -> DumpResult:
    """Import every part of the dump `source` into the store (created if missing), resuming.
    Freed large blocks go back to the system from now on (`util.malloc`), so memory stays
    bounded by the chunks in flight."""
    opts = opts or DumpOptions()
    return_freed_blocks()
    if opts.shard_rows < 1:
        raise BadInput(f"`shard_rows=` is {opts.shard_rows}", "give a positive row count")
    store_path = Path(store_path)
    parts = find_parts(source)
    sizes = {_key(p): part_rows(p, opts.columns) for p in parts}
    with hold(store_path) as held:
        store = _open_or_create(held, parts[0], opts)
        try:
            return _import(parts, sizes, store, opts, str(source))
        except BaseException:
            if held.created and not len(store.refresh()):  # `hold` removes the empty store
                (store_path / JOURNAL).unlink(missing_ok=True)
            raise


def _import(parts: list[DumpPart], sizes: dict[str, int], store: Store, opts: DumpOptions,
            source: str) -> DumpResult:
    """The import loop, under the hold of the store's writer lock (one writer at a time)."""
    store_path = store.path
    journal = _journal(store_path)
    done = journal["parts"]
    for part in parts:
        record = done.get(_key(part))
        if record and record["size"] != part.features.stat().st_size:
            raise BadInput(f"{part.features} changed since it was imported: restore it "
                           "or import it into a new store")
    todo = [p for p in parts if not done.get(_key(p), {}).get("done")]
    starts = {_key(p): done.get(_key(p), {}).get("rows", 0) for p in todo}
    left = sum(sizes[k] - a for k, a in starts.items())
    writer = _writer(store, opts, left)
    commits = _Commits(store, writer, lambda: write_json(store_path / JOURNAL, journal))
    ring = _Ring(writer.buffers, store.dtype, store.dim)
    stream = _prepared(todo, starts, opts, ring, store.manifest.id_hash)
    with contextlib.closing(writer), progress(left, "import", disable=not opts.progress) as bar:
        try:
            first = True
            for part, ready in prefetched(stream) if opts.prefetch else stream:
                record = done.setdefault(_key(part), {"rows": 0, "done": False,
                                                      "size": part.features.stat().st_size})
                if ready is None:  # the end of the part: done once its last chunk commits
                    commits.add(None, None, functools.partial(record.update, done=True))
                    first = True
                    continue
                staged = _stage(store, part, ready, opts, commits.last, check_existing=first)
                first = False
                commits.add(staged, ready.slot, functools.partial(
                    _committed, record, ready.chunk.start + len(ready.features), bar))
            commits.finish()
        except Exception:
            commits.finish()  # what was written before the error is committed (as in order)
            raise
        except BaseException:
            commits.abandon()
            raise
    log.info("imported %d rows from %d parts of %s into %s (%d parts already done)",
             commits.rows, len(todo), source, store_path, len(parts) - len(todo))
    return DumpResult(store.refresh(), commits.rows, len(todo), len(parts) - len(todo))


def _committed(record: dict, rows: int, bar) -> None:
    """A chunk's journal record and progress once it is committed (or found committed)."""
    bar.update(rows - record["rows"])
    record["rows"] = rows


def _writer(store: Store, opts: DumpOptions, left: int) -> InProcess | WriterProcess:
    """A writer process when asked, or (`opts.writer` None) for chunks of WRITER_BYTES or more
    when there is more than one; else shards are written in this process."""
    rows = min(opts.shard_rows, max(left, 1))
    chunk = rows * store.dim * np.dtype(store.dtype).itemsize
    process = opts.writer if opts.writer is not None else \
        chunk >= WRITER_BYTES and left > opts.shard_rows
    if process and workers.SUPPORTED:
        return WriterProcess(store, 3, chunk, rows)  # one written, one waiting, one being read
    return InProcess(store, 2, chunk)  # one being read while the other is written


class _Commits:
    """The import's appends, committed in order one step behind: a chunk's shard is submitted
    to the writer and then the one submitted before it is committed, so a writer process
    writes one shard while the next chunk is staged. Each chunk's journal update is applied
    (and the journal written) once its shard, and every shard before it, is committed; so a
    kill leaves the journal at most one chunk behind the store, as before."""

    def __init__(self, store: Store, writer: InProcess | WriterProcess, save: Callable[[], None]):
        self._store, self._writer, self._save = store, writer, save
        self._flight: deque[Staged] = deque()  # submitted, not committed
        self._due: deque[tuple[Staged | None, Callable[[], None]]] = deque()
        self._broken = False  # a commit failed: commit nothing more
        self.rows = 0

    @property
    def last(self) -> Staged | None:
        """The latest append submitted and not committed yet (the next one follows it)."""
        return self._flight[-1] if self._flight else None

    def add(self, staged: Staged | None, slot: int | None, update: Callable[[], None]) -> None:
        """Submit the shard of `staged` (None: nothing to write) and commit the one before it;
        `update` is applied when `staged` (or, for None, the append before it) commits."""
        if staged is not None:
            self._writer.submit(staged, slot)
            self._flight.append(staged)
        self._due.append((staged, update))
        if len(self._flight) != 1:  # none in flight: update now; two: commit the first
            self._commit()

    def finish(self) -> None:
        """Commit every append in flight and apply every update (after an error: unless a
        commit failed, then the rest is abandoned)."""
        if self._broken:
            self.abandon()
            return
        while self._flight or self._due:
            self._commit()

    def _commit(self) -> None:
        """Commit the oldest append in flight (if any) and apply the updates due."""
        if self._flight:
            staged = self._flight.popleft()
            try:
                self._store.commit(staged, self._writer.take(staged))
            except BaseException:
                self._broken = True
                raise
            self.rows += len(staged.rows)
        applied = False
        while self._due and self._due[0][0] not in self._flight:
            self._due.popleft()[1]()
            applied = True
        if applied:
            self._save()

    def abandon(self) -> None:
        """Drop the appends in flight: each write's outcome is awaited (so that no file is
        being written after this) and its shard removed."""
        while self._flight:
            staged = self._flight.popleft()
            with contextlib.suppress(Exception):
                self._writer.take(staged)
            staged.path.unlink(missing_ok=True)


def _open_or_create(held: Hold, part: DumpPart, opts: DumpOptions) -> Store:
    """The held store, or a new one with the dump's dimension."""
    path, store = held.path, held.store
    if store is not None:
        if opts.dtype is not None and opts.dtype != store.dtype:
            raise BadInput(f"store {path} keeps {store.dtype} on disk",
                           f"drop `dtype=` {opts.dtype} or import into a new store")
        return store
    first = next(read_chunks(part, opts.columns, 1), None)
    if first is None:
        raise BadInput(f"{part.features} has no rows: remove it from the dump")
    dim = first.features.shape[1]
    return held.create(dim=dim, dtype=opts.dtype or "float16",
                       classes=opts.classes or (), provenance=Provenance(
                           opts.encoder or "external", opts.weights or "unknown", dim,
                           preprocess={"imported_from": part.name}))


@dataclass
class _Ready:
    """A chunk prepared for appending: its ids (and their hashes), its features in the store's
    dtype (normalised when asked) and their row norms."""

    chunk: Chunk
    ids: np.ndarray | list[str]
    keys: IdKeys
    features: np.ndarray
    norms: np.ndarray
    slot: int | None  # the ring buffer holding the features (None: none)


class _Ring:
    """Chunk buffers reused for a whole import (flat arrays of the store's dtype, each holding
    `shard_rows` rows): chunk k's features go to buffer k % len(buffers), so a chunk must be
    appended before the one len(buffers) chunks later is read. Reusing memory rather than
    allocating each chunk anew saves faulting in every page of it again."""

    def __init__(self, buffers: list, dtype: str, dim: int):
        self._buffers = [np.frombuffer(b, dtype) for b in buffers]  # (writable: no copy)
        self.dtype, self.dim = np.dtype(dtype), dim
        self._next = 0
        self._scratch = np.empty(0, np.uint8)
        self.slot: int | None = None  # the buffer of the latest chunk (None: not a buffer)

    def take(self, n: int, dim: int) -> np.ndarray:
        """The next buffer as an (n, dim) array; a new array for a dim not the store's (which
        the store's check of the rows then refuses)."""
        if dim != self.dim or n * dim > len(self._buffers[0]):  # (the latter: never)
            self.slot = None
            return np.empty((n, dim), self.dtype)
        self.slot, self._next = self._next, (self._next + 1) % len(self._buffers)
        return self._buffers[self.slot][:n * dim].reshape(n, dim)

    def into(self, n: int, dim: int, dtype: np.dtype) -> np.ndarray:
        """Where `read_chunks` reads a chunk of a .npy: the next buffer when the file is in the
        store's dtype, else scratch memory reused from chunk to chunk (`_prepare` converts)."""
        if dtype == self.dtype:
            return self.take(n, dim)
        size = n * dim * dtype.itemsize
        if self._scratch.nbytes < size:
            self._scratch = np.empty(size, np.uint8)
        return self._scratch[:size].view(dtype).reshape(n, dim)

    def holds(self, x: np.ndarray) -> bool:
        """Whether `x` is the latest buffer taken (the chunk was read into it)."""
        return self.slot is not None and np.may_share_memory(x, self._buffers[self.slot])


def _prepare(part: DumpPart, chunk: Chunk, opts: DumpOptions, ring: _Ring,
             id_hash: str) -> _Ready:
    """Everything of an append that does not need the store: what `prefetched` overlaps."""
    n = len(chunk.features)
    ids = chunk.ids if chunk.ids is not None else [
        f"{part.name}:{i}" for i in range(chunk.start, chunk.start + n)]
    keys = IdKeys.of(ids, id_hash) if chunk.id_bytes is None else \
        IdKeys(None, id_hashes(chunk.id_bytes, id_hash), id_hash, chunk.id_text)
    chunk.id_bytes = None  # (the keys have them as `text`)
    x = chunk.features
    out = x if ring.holds(x) else ring.take(n, x.shape[1])  # in place, else into a buffer
    if opts.normalize:
        features, norms = normalised(x, ids, "features", ring.dtype, out)
    else:
        if out is not x:
            np.copyto(out, x, casting="unsafe")
        features, norms = out, row_norms(out)
    return _Ready(chunk, ids, keys, features, norms, ring.slot)


def _prepared(todo: list[DumpPart], starts: dict[str, int], opts: DumpOptions,
              ring: _Ring, id_hash: str) -> Iterator[tuple[DumpPart, _Ready | None]]:
    """Every chunk left of every part, prepared (ids hashed by the store's `id_hash`), and
    (part, None) at the end of each part."""
    for part in todo:
        for chunk in read_chunks(part, opts.columns, opts.shard_rows, starts[_key(part)],
                                 ring.into):
            yield part, _prepare(part, chunk, opts, ring, id_hash)
        yield part, None


def _stage(store: Store, part: DumpPart, ready: _Ready, opts: DumpOptions,
           after: Staged | None, check_existing: bool) -> Staged | None:
    """Stage one chunk's append after `after` (an append not committed yet); None for a
    chunk committed before a kill (or empty)."""
    chunk, n = ready.chunk, len(ready.features)
    if check_existing:
        there = store.existing_ids(ready.keys)
        if there.all():
            log.info("%s rows %d-%d were committed before an interruption: skipped",
                     part.name, chunk.start, chunk.start + n)
            return None
    vocabulary = list(store.classes if after is None else after.classes)
    labels = None if chunk.labels is None else _label_indices(chunk.labels, vocabulary)
    rows = Rows.make(ready.ids, ready.features, labels, opts.split, chunk.sources,
                     keep_float16=True)
    return store.stage(rows, provenance=_provenance(opts, store.dim), classes=vocabulary,
                       keys=ready.keys, norms=ready.norms, after=after)


def _label_indices(labels: np.ndarray | Names, vocabulary: list[str]) -> np.ndarray:
    """Class indices of integer labels or class names; names not yet known extend `vocabulary`
    (in sorted order per chunk, so reruns agree); None/empty names are unlabelled (-1)."""
    if isinstance(labels, Names):  # a string column, dictionary-encoded by arrow
        vocabulary += sorted(set(labels.names) - set(vocabulary) - {""})
        index = {c: i for i, c in enumerate(vocabulary)} | {"": -1}
        return np.array([index[c] for c in labels.names] + [-1], np.int64)[labels.codes]
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    names = labels.tolist()
    if not set(map(type, names)) <= {str, type(None)}:
        names = ["" if v is None else str(v) for v in names]
    vocabulary += sorted(set(names) - set(vocabulary) - {"", None})
    index = {c: i for i, c in enumerate(vocabulary)} | {"": -1, None: -1}
    return np.fromiter(map(index.__getitem__, names), np.int64, len(names))


def _provenance(opts: DumpOptions, dim: int) -> Provenance | None:
    """The encoder the user says made the dump (checked against the store's), or None."""
    if opts.encoder is None and opts.weights is None:
        return None
    return Provenance(opts.encoder or "external", opts.weights or "unknown", dim)
