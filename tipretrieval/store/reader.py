"""Planning and reading batches of store rows from shards into preallocated arrays.

Each batch is planned as pieces of shards (cut at batch boundaries, filtered by mask) and every
piece is read straight into the batch's own arrays: no regrouping copies, only the columns
asked for, and float16 -> float32 conversion only when asked for. Large reads fill the features
(and views) of their batches in worker processes (`workers.Pool`) too, into shared-memory slots
that the batches keep (no copy) until they are garbage; the other columns are read here, so
batches are the same as read in-process.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..rows import Rows
from . import workers as pool
from .float16 import convert
from .manifest import DTYPES, Manifest, ShardInfo
from .shard import CHUNK_ROWS, IdKeys, ShardReader

COLUMNS = ("ids", "features", "labels", "splits", "sources", "row_ids")
SCAN_ROWS = 16 * CHUNK_ROWS  # rows per filter step: the filtered columns of a step are read
STAGE_BYTES = 16 << 20  # features/views read per step when they are converted or masked
_RUN_ROWS = 64  # masked reads go run by run when runs average more rows apart than this
PARALLEL_BYTES = 256 << 20  # `workers=None` reads at least this many feature bytes in workers
RING_BYTES = 128 << 20  # the most shared memory one read's workers fill (all their slots)
SLOTS_PER_WORKER = pool.DEPTH + 1  # (one more for the batch the consumer holds)
AHEAD = 2  # the most batches read here ahead of the one a worker is filling


def matching(info: ShardInfo, splits: set | None, label_set: set | None) -> int:
    """How many rows of a shard pass the split and label filters (from its counts)."""
    return sum(n for s, by_label in info.counts.items() if splits is None or s in splits
               for label, n in by_label.items() if label_set is None or label in label_set)


def _keep(shard: ShardReader, start: int, stop: int, splits: set | None,
          label_set: set | None, rows: np.ndarray | None) -> np.ndarray:
    """Which of the local rows `start:stop` pass the filters (`rows`: sorted wanted rows)."""
    if rows is None:
        keep = np.ones(stop - start, dtype=bool)
    else:
        keep = np.zeros(stop - start, dtype=bool)
        keep[rows[np.searchsorted(rows, start):np.searchsorted(rows, stop)] - start] = True
    if splits is not None and keep.any():
        keep &= np.isin(shard.splits(start, stop), list(splits))
    if label_set is not None and keep.any():
        keep &= np.isin(shard.column("labels", start, stop), list(label_set))
    return keep


def _run_all(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        call()


def _runs(keep: np.ndarray) -> np.ndarray:
    """(start, stop) of every run of True in a bool mask, as a (runs, 2) array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.view(np.int8), [0]))))
    return edges.reshape(-1, 2)


def _column(shard: ShardReader, piece: Piece, name: str) -> np.ndarray:
    """A small column (ids, labels, splits, sources) of the rows of `piece`."""
    if name in ("ids", "sources"):
        values = shard.strings(name, piece.start, piece.stop)
    elif name == "splits":
        values = shard.splits(piece.start, piece.stop)
    else:
        values = shard.column(name, piece.start, piece.stop)
    return values if piece.keep is None else values[piece.keep]


@dataclass
class Piece:
    """Rows of one shard bound for one batch: local rows `start:stop` where `keep` (None: all)."""

    shard: ShardInfo
    start: int
    stop: int
    keep: np.ndarray | None = None

    def __len__(self) -> int:
        return self.stop - self.start if self.keep is None else int(np.count_nonzero(self.keep))

    def cut(self, n: int) -> tuple[Piece, Piece]:
        """The first `n` rows of this piece and the rest."""
        if self.keep is None:
            at = self.start + n
            return Piece(self.shard, self.start, at), Piece(self.shard, at, self.stop)
        at = int(np.flatnonzero(self.keep)[n - 1]) + 1
        return (Piece(self.shard, self.start, self.start + at, self.keep[:at]),
                Piece(self.shard, self.start + at, self.stop, self.keep[at:]))


def _plan(shard_dir: Path, shards: list[ShardInfo], dim: int, id_hash: str, splits: set | None,
          label_set: set | None, ids: list | None,
          row_ids: np.ndarray | None = None) -> Iterator[Piece]:
    """The matching rows of `shards` in store order: whole shards when nothing filters,
    else pieces of at most SCAN_ROWS rows (only the filtered columns are read). `row_ids`
    (sorted, unique) selects rows by row id without opening the shards they are not in."""
    keys = None if ids is None else IdKeys.of(ids, id_hash)
    for info in shards:
        if splits is None and label_set is None and keys is None and row_ids is None:
            yield Piece(info, 0, info.rows)
            continue
        rows = None
        if row_ids is not None:
            first = info.first_row_id
            rows = row_ids[np.searchsorted(row_ids, first):
                           np.searchsorted(row_ids, first + info.rows)] - first
            if not len(rows):
                continue
        with ShardReader(shard_dir, info, dim) as shard:
            if keys is not None:
                located = shard.locate(keys)
                found = np.unique(located[located >= 0])
                rows = found if rows is None else np.intersect1d(rows, found)
                if not len(rows):
                    continue
            lo, hi = (0, info.rows) if rows is None else (int(rows[0]), int(rows[-1]) + 1)
            for start in range(lo, hi, SCAN_ROWS):
                stop = min(start + SCAN_ROWS, hi)
                keep = _keep(shard, start, stop, splits, label_set, rows)
                if keep.all():
                    yield Piece(info, start, stop)
                elif keep.any():
                    yield Piece(info, start, stop, keep)


def _batches(pieces: Iterable[Piece], size: int,
             key: Callable[[ShardInfo], tuple]) -> Iterator[list[Piece]]:
    """Group pieces into batches of exactly `size` rows (the last may be smaller), cutting
    pieces at batch boundaries; pieces whose shards differ in `key` never share a batch."""
    batch: list[Piece] = []
    count = 0
    for piece in pieces:
        if batch and key(piece.shard) != key(batch[0].shard):
            yield batch
            batch, count = [], 0
        while count + len(piece) >= size:
            head, piece = piece.cut(size - count)
            yield batch + [head]
            batch, count = [], 0
        if len(piece):
            batch.append(piece)
            count += len(piece)
    if batch:
        yield batch


def slot_arrays(buf: memoryview, n: int, dim: int, views: int, dtype: np.dtype
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The features (n, dim) and views (n, views, dim) of a batch of `n` rows laid out in a
    worker's slot `buf` (views after the features; None without views): views of one array
    over the slot, their `base`, which every array made from them keeps alive."""
    size = n * dim
    flat = np.frombuffer(buf, dtype, size * (1 + views))
    features = flat[:size].reshape(n, dim)
    return features, flat[size:].reshape(n, views, dim) if views else None


def worker_count(workers: int | None, rows: int, batch_size: int, slot_bytes: int,
                 row_bytes: int) -> int:
    """How many worker processes read `rows` rows in batches (0: read in-process): `workers`,
    or when None one per CPU but one (the consumer's: it reads too, whenever the oldest
    batch's worker is not done) for reads of PARALLEL_BYTES or more, and none on two CPUs or
    fewer (measured: a cold read, bound by the disk, was slower with a worker's start-up and
    its competition for the CPU); at most one per batch, as many as RING_BYTES of slots allow,
    never for a single batch."""
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        workers = cpus - 1 if cpus > 2 and rows * row_bytes >= PARALLEL_BYTES else 0
    batches = -(-rows // batch_size)
    count = min(workers, batches, RING_BYTES // (SLOTS_PER_WORKER * slot_bytes))
    return count if pool.SUPPORTED and batches > 1 else 0


@dataclass
class WorkerFill:
    """What a worker process runs per batch: fills the batch's features (and views) into its
    slot with the same reads and checks as in-process (picklable; its reader lives in the
    worker, keeping the current shard and its chunk cache open between batches)."""

    shard_dir: Path
    manifest: Manifest
    features_dtype: str | None
    with_views: bool
    _reader: BatchReader | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}

    def __call__(self, pieces: list[Piece], buf: memoryview) -> None:
        if self._reader is None:
            self._reader = BatchReader(self.shard_dir, self.manifest, ("features",),
                                       self.features_dtype, self.with_views)
        self._reader.fill_arrays(pieces, buf)


class BatchReader:
    """Reads one manifest snapshot's rows in batches of new `Rows`, keeping the current shard
    open; `columns` and `features_dtype` are checked on construction (BadInput).

    Features and views are read straight into the batch's arrays when no conversion or mask is
    needed, otherwise through one reused staging buffer, so no batch is copied twice.
    """

    def __init__(self, shard_dir: Path, manifest: Manifest, columns: Iterable[str],
                 features_dtype: str | None, with_views: bool):
        want = frozenset([columns] if isinstance(columns, str) else columns)
        if want - set(COLUMNS) or "features" not in want:
            raise BadInput(
                f"columns {sorted(want)} are not a choice of {COLUMNS} that includes "
                "'features': name only those (views come with with_views=True)"
            )
        if features_dtype not in (None, *DTYPES):
            raise BadInput(f"features_dtype {features_dtype!r} is not supported: use one of "
                           f"{DTYPES} or None (as stored)")
        self._dir, self._manifest = shard_dir, manifest
        self._dim, self._stored = manifest.dim, np.dtype(manifest.dtype)
        self._nonzero = manifest.provenance.normalized  # unit vectors are never all zero
        self._dtype = np.dtype(features_dtype or manifest.dtype)
        self.columns, self._with_views = want, with_views
        self._reader: ShardReader | None = None
        self._stage = np.empty(0, dtype=np.uint8)
        self._checks: list[Callable[[], None]] | None = None  # deferred checks (else run now)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _open(self, info: ShardInfo) -> ShardReader:
        if self._reader is None or self._reader.info.name != info.name:
            self.close()
            self._reader = ShardReader(self._dir, info, self._dim)
        return self._reader

    def read(self, batch_size: int, splits: set | None, label_set: set | None,
             ids: list | None, row_ids: np.ndarray | None = None,
             workers: int | None = 0) -> Iterator[Rows]:
        """The matching rows of the snapshot in store order, in batches of `batch_size`;
        batches never mix rows with and without views (or sources, when read). `workers`:
        worker processes that read the features (see `worker_count`; 0: none)."""
        shards = [s for s in self._manifest.shards if matching(s, splits, label_set)]
        sources = "sources" in self.columns

        def key(info: ShardInfo) -> tuple:
            return (info.views if self._with_views else 0, info.has_sources and sources)
        rows = sum(matching(s, splits, label_set) for s in shards)
        if ids is not None:
            rows = min(rows, len(ids))
        if row_ids is not None:
            rows = min(rows, len(row_ids))
        views = max((s.views for s in shards), default=0) if self._with_views else 0
        row_bytes = (1 + views) * self._dim * self._dtype.itemsize
        count = worker_count(workers, rows, batch_size, batch_size * row_bytes,
                             (1 + views) * self._dim * self._stored.itemsize)
        try:
            plan = _plan(self._dir, shards, self._dim, self._manifest.id_hash, splits, label_set,
                         ids, row_ids)
            batches = _batches(plan, batch_size, key)
            if count:
                yield from self._parallel(batches, count, batch_size * row_bytes)
            else:
                yield from self._checking_ahead(batches)
        finally:
            self.close()

    def _checking_ahead(self, batches: Iterator[list[Piece]]) -> Iterator[Rows]:
        """`batches` read here; the value checks of a batch's features read as stored run in a
        thread while the next batch is read (numpy releases the GIL, h5py holds it: the checks
        were a tenth of such a read) and are waited for before the batch is yielded, so its
        error, if any, still comes before anything after it."""
        with ThreadPoolExecutor(1) as checker:
            held: tuple[Rows, Future] | None = None
            while True:
                self._checks = []
                try:
                    batch = next(batches, None)
                    rows = None if batch is None else self.batch(batch)
                except BaseException:
                    if held is not None:
                        held[1].result()  # the batch before is checked first
                    raise
                finally:
                    checks, self._checks = self._checks, None
                if held is not None:
                    held[1].result()
                    yield held[0]
                if rows is None:
                    return
                held = rows, checker.submit(_run_all, checks)

    def _parallel(self, batches: Iterator[list[Piece]], count: int,
                  slot_bytes: int) -> Iterator[Rows]:
        """`batches` in order, read by `count` worker processes into shared slots that are
        handed out without a copy, and here whenever the oldest batch's worker is not done yet
        (or none is free: while they start, or while the consumer holds all their slots)."""
        fill = WorkerFill(self._dir, self._manifest, self._dtype.name, self._with_views)
        with pool.Pool(count, fill, slot_bytes, count * SLOTS_PER_WORKER) as workers:
            queue: deque[tuple[list[Piece], Rows | None]] = deque()  # None: in a worker
            here = 0  # batches read here in `queue`
            batches = iter(batches)
            while True:
                while workers.ready() and (slot := workers.free_slot()) is not None:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    workers.submit(batch, slot)
                    queue.append((batch, None))
                busy = queue and queue[0][1] is None and not workers.done()
                if not queue or (busy and here < AHEAD):
                    batch = next(batches, None)
                    if batch is not None:
                        queue.append((batch, self.batch(batch)))  # read here meanwhile
                        here += 1
                        continue
                    if not queue:
                        return
                batch, rows = queue.popleft()
                if rows is None:
                    slot, _ = workers.take()
                    rows = self.batch(batch, workers.slot(slot))
                    workers.lend(slot, rows.features.base)
                else:
                    here -= 1
                yield rows

    def _views(self, pieces: list[Piece]) -> int:
        """Views per row of a batch (0 unless read)."""
        return pieces[0].shard.views if pieces and self._with_views else 0

    def batch(self, pieces: list[Piece], filled: memoryview | None = None) -> Rows:
        """The rows of `pieces` (one batch, in order) as new arrays; the features and views
        are the arrays of a worker's slot `filled` (no copy) when given, else read here."""
        want = self.columns
        n = sum(len(p) for p in pieces)
        views = self._views(pieces)
        sources = bool(pieces) and pieces[0].shard.has_sources and "sources" in want

        def new(name: str, shape: tuple = (), dtype=object) -> np.ndarray | None:
            return np.empty((n, *shape), dtype=dtype) if name in want else None
        if filled is not None:
            features, stored_views = slot_arrays(filled, n, self._dim, views, self._dtype)
        else:
            features = np.empty((n, self._dim), dtype=self._dtype)
            stored_views = np.empty((n, views, self._dim), dtype=self._dtype) if views else None
        out = Rows(
            ids=new("ids"), features=features, labels=new("labels", dtype=np.int64),
            splits=new("splits"), sources=new("sources") if sources else None,
            views=stored_views, row_ids=new("row_ids", dtype=np.int64),
        )
        pos = 0
        for piece in pieces:
            at = slice(pos, pos + len(piece))
            if filled is None:
                self._fill_arrays(piece, out.features[at], None if views == 0 else out.views[at])
            self._fill(piece, out, at)
            pos += len(piece)
        return out

    def fill_arrays(self, pieces: list[Piece], buf: memoryview) -> None:
        """The features (and views) of the batch `pieces` into the slot `buf` (a worker's)."""
        features, views = slot_arrays(buf, sum(len(p) for p in pieces), self._dim,
                                      self._views(pieces), self._dtype)
        pos = 0
        for piece in pieces:
            at = slice(pos, pos + len(piece))
            self._fill_arrays(piece, features[at], None if views is None else views[at])
            pos += len(piece)

    def _fill_arrays(self, piece: Piece, features: np.ndarray,
                     views: np.ndarray | None) -> None:
        """Read the features (and views) of `piece` into `features` (and `views`)."""
        shard = self._open(piece.shard)
        self._array(shard, "features", piece, features)
        if views is not None:
            self._array(shard, "views", piece, views)

    def _fill(self, piece: Piece, out: Rows, at: slice) -> None:
        """Read the columns of `piece` other than features and views into rows `at` of `out`."""
        shard = self._open(piece.shard) if self.columns - {"features", "row_ids"} else None
        if out.ids is not None:
            out.ids[at] = _column(shard, piece, "ids")
        if out.labels is not None:
            out.labels[at] = _column(shard, piece, "labels")
        if out.labels is not None:
            shard.check_labels(out.labels[at], len(self._manifest.classes))
        if out.splits is not None:
            out.splits[at] = _column(shard, piece, "splits")
        if out.sources is not None:
            out.sources[at] = _column(shard, piece, "sources")
        if out.row_ids is not None:
            local = np.arange(piece.start, piece.stop, dtype=np.int64)
            out.row_ids[at] = piece.shard.first_row_id + \
                (local if piece.keep is None else local[piece.keep])

    def _array(self, shard: ShardReader, name: str, piece: Piece, out: np.ndarray) -> None:
        """Dataset `name` (features or views) of `piece` into `out`, converting its dtype."""
        if piece.keep is None and out.dtype == self._stored:
            shard.column_into(name, piece.start, piece.stop, out)
            check = functools.partial(shard.check_features, piece.start, out, self._nonzero)
            if self._checks is None:
                check()
            else:
                self._checks.append(check)  # run by `_checking_ahead`
            return
        if piece.keep is not None:
            runs = _runs(piece.keep)
            if len(runs) * _RUN_ROWS < len(piece.keep):  # sparse: read only the kept runs
                pos = 0
                for a, b in runs:
                    run = Piece(piece.shard, piece.start + a, piece.start + b)
                    self._array(shard, name, run, out[pos:pos + b - a])
                    pos += b - a
                return
        row_shape = out.shape[1:]
        row_bytes = int(np.prod(row_shape)) * self._stored.itemsize
        step = max(1, STAGE_BYTES // row_bytes)
        need = min(step, piece.stop - piece.start) * row_bytes
        if self._stage.nbytes < need:
            self._stage = np.empty(need, dtype=np.uint8)
        pos = 0
        for start in range(piece.start, piece.stop, step):
            stop = min(start + step, piece.stop)
            stage = self._stage[:(stop - start) * row_bytes].view(self._stored)
            stage = stage.reshape((stop - start, *row_shape))
            shard.column_into(name, start, stop, stage)
            keep = piece.keep
            if keep is not None:
                keep = keep[start - piece.start:stop - piece.start]
                stage = stage[keep]
            shard.check_features(start, stage, self._nonzero, keep)
            convert(stage, out[pos:pos + len(stage)])
            pos += len(stage)
