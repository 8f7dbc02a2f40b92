"""`Store`: a directory of immutable HDF5 shards named by one atomically replaced manifest.

Writers take a file lock, write a new shard beside its final name, rename it into place and
then replace the manifest; readers work from the manifest snapshot they opened, so they never
see a half-written shard and a killed writer leaves the old contents intact.

Reading plans each batch as pieces of shards (cut at batch boundaries, filtered by mask) and
reads every piece straight into the batch's own arrays: no regrouping copies, only the
columns asked for, and float16 -> float32 conversion only when asked for.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from .errors import BadInput, TipError
from .manifest import DTYPES, MANIFEST_NAME, Manifest, ShardInfo
from .progress import progress
from .provenance import Provenance
from .rows import Rows
from .shard import (
    CHUNK_ROWS,
    IdKeys,
    ShardReader,
    convert,
    decode,
    verify_shard,
    write_shard,
)

log = logging.getLogger(__name__)

NORM_TOLERANCE = 2e-3
SHARD_DIR = "shards"
LOCK_NAME = ".lock"
COLUMNS = ("ids", "features", "labels", "splits", "sources", "row_ids")
SCAN_ROWS = 16 * CHUNK_ROWS  # rows per filter step: the filtered columns of a step are read
STAGE_BYTES = 16 << 20  # features/views read per step when they are converted or masked
_RUN_ROWS = 64  # masked reads go run by run when runs average more rows apart than this
_WRITER_FILE = re.compile(r"\.?\d{12}-[0-9a-f]+\.h5(\..+\.tmp)?")  # shards and their temps


def _first_bad(mask: np.ndarray, ids: np.ndarray) -> str:
    i = int(np.flatnonzero(mask)[0])
    return f"{int(mask.sum())} rows (first: row {i}, id {ids[i]!r})"


def _check_normalised(x: np.ndarray, ids: np.ndarray, what: str) -> None:
    norms = np.linalg.norm(x, axis=-1)
    bad = np.abs(norms - 1.0) > NORM_TOLERANCE
    if bad.ndim > 1:
        bad = bad.any(axis=tuple(range(1, bad.ndim)))
    if bad.any():
        raise BadInput(
            f"{what} of {_first_bad(bad, ids)} are not L2-normalised: normalise them first "
            "(`tipretrieval import` does so unless --require-normalized is given)"
        )


def _check_finite(x: np.ndarray, ids: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise BadInput(f"{what} of {_first_bad(bad, ids)} contain NaN or inf: drop or "
                       "recompute those rows")


def _check_strings(values: np.ndarray, what: str) -> None:
    for v in values:
        if not v or "\x00" in v:
            raise BadInput(f"{what} {v!r} is empty or contains a NUL character: give every "
                           f"row a non-empty {what}")


def _extended(current: tuple[str, ...], classes: Iterable[str]) -> tuple[str, ...]:
    """`classes` when it starts with the `current` vocabulary (in order); BadInput otherwise."""
    classes = tuple(str(c) for c in classes)
    if len(set(classes)) != len(classes) or not all(classes):
        raise BadInput("class names are empty or not unique: give each class once")
    for i, name in enumerate(current):
        if i >= len(classes) or classes[i] != name:
            got = classes[i] if i < len(classes) else "nothing"
            raise BadInput(
                f"class list differs from the store's vocabulary at label {i} ({got!r}, store "
                f"has {name!r}): list the store's {len(current)} classes first, in order"
            )
    return classes


def _as_set(value, kind) -> set | None:
    if value is None:
        return None
    if isinstance(value, (str, int, np.integer)):
        value = [value]
    return {kind(v) for v in value}


def _matching(info: ShardInfo, splits: set | None, label_set: set | None) -> int:
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
        codes = [i for i, name in enumerate(shard.split_names) if name in splits]
        keep &= np.isin(shard.column("splits", start, stop), codes)
    if label_set is not None and keep.any():
        keep &= np.isin(shard.column("labels", start, stop), list(label_set))
    return keep


def _runs(keep: np.ndarray) -> np.ndarray:
    """(start, stop) of every run of True in a bool mask, as a (runs, 2) array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.view(np.int8), [0]))))
    return edges.reshape(-1, 2)


def _column(shard: ShardReader, piece: _Piece, name: str) -> np.ndarray:
    """A small column (ids, labels, splits, sources) of the rows of `piece`."""
    values = shard.column(name, piece.start, piece.stop)
    return values if piece.keep is None else values[piece.keep]


@dataclass
class _Piece:
    """Rows of one shard bound for one batch: local rows `start:stop` where `keep` (None: all)."""

    shard: ShardInfo
    start: int
    stop: int
    keep: np.ndarray | None = None

    def __len__(self) -> int:
        return self.stop - self.start if self.keep is None else int(np.count_nonzero(self.keep))

    def cut(self, n: int) -> tuple[_Piece, _Piece]:
        """The first `n` rows of this piece and the rest."""
        if self.keep is None:
            at = self.start + n
            return _Piece(self.shard, self.start, at), _Piece(self.shard, at, self.stop)
        at = int(np.flatnonzero(self.keep)[n - 1]) + 1
        return (_Piece(self.shard, self.start, self.start + at, self.keep[:at]),
                _Piece(self.shard, self.start + at, self.stop, self.keep[at:]))


def _batches(pieces: Iterable[_Piece], size: int,
             key: Callable[[ShardInfo], tuple]) -> Iterator[list[_Piece]]:
    """Group pieces into batches of exactly `size` rows (the last may be smaller), cutting
    pieces at batch boundaries; pieces whose shards differ in `key` never share a batch."""
    batch: list[_Piece] = []
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


class _BatchReader:
    """Fills batches of pieces into new `Rows`, keeping the current shard open.

    Features and views are read straight into the batch's arrays when no conversion or mask is
    needed, otherwise through one reused staging buffer, so no batch is copied twice.
    """

    def __init__(self, shard_dir: Path, manifest: Manifest, columns: frozenset[str],
                 dtype: np.dtype, with_views: bool):
        self._dir, self._dim, self._stored = shard_dir, manifest.dim, np.dtype(manifest.dtype)
        self.columns, self._dtype, self._with_views = columns, dtype, with_views
        self._reader: ShardReader | None = None
        self._stage = np.empty(0, dtype=np.uint8)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _open(self, info: ShardInfo) -> ShardReader:
        if self._reader is None or self._reader.info.name != info.name:
            self.close()
            self._reader = ShardReader(self._dir, info)
        return self._reader

    def batch(self, pieces: list[_Piece]) -> Rows:
        """The rows of `pieces` (one batch, in order) as new arrays."""
        want = self.columns
        n = sum(len(p) for p in pieces)
        views = pieces[0].shard.views if pieces and self._with_views else 0
        sources = bool(pieces) and pieces[0].shard.has_sources and "sources" in want

        def new(name: str, shape: tuple = (), dtype=object) -> np.ndarray | None:
            return np.empty((n, *shape), dtype=dtype) if name in want else None
        out = Rows(
            ids=new("ids"), features=np.empty((n, self._dim), dtype=self._dtype),
            labels=new("labels", dtype=np.int64), splits=new("splits"),
            sources=new("sources") if sources else None,
            views=np.empty((n, views, self._dim), dtype=self._dtype) if views else None,
            row_ids=new("row_ids", dtype=np.int64),
        )
        pos = 0
        for piece in pieces:
            self._fill(piece, out, slice(pos, pos + len(piece)))
            pos += len(piece)
        return out

    def _fill(self, piece: _Piece, out: Rows, at: slice) -> None:
        """Read `piece` into rows `at` of the batch `out`."""
        shard = self._open(piece.shard)
        self._array(shard, "features", piece, out.features[at])
        if out.views is not None:
            self._array(shard, "views", piece, out.views[at])
        if out.ids is not None:
            out.ids[at] = decode(_column(shard, piece, "ids"))
        if out.labels is not None:
            out.labels[at] = _column(shard, piece, "labels")
        if out.splits is not None:
            out.splits[at] = shard.split_names[_column(shard, piece, "splits")]
        if out.sources is not None:
            out.sources[at] = decode(_column(shard, piece, "sources"))
        if out.row_ids is not None:
            local = np.arange(piece.start, piece.stop, dtype=np.int64)
            out.row_ids[at] = piece.shard.first_row_id + \
                (local if piece.keep is None else local[piece.keep])

    def _array(self, shard: ShardReader, name: str, piece: _Piece, out: np.ndarray) -> None:
        """Dataset `name` (features or views) of `piece` into `out`, converting its dtype."""
        if piece.keep is None and out.dtype == self._stored:
            shard.column_into(name, piece.start, piece.stop, out)
            return
        if piece.keep is not None:
            runs = _runs(piece.keep)
            if len(runs) * _RUN_ROWS < len(piece.keep):  # sparse: read only the kept runs
                pos = 0
                for a, b in runs:
                    run = _Piece(piece.shard, piece.start + a, piece.start + b)
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
            if piece.keep is not None:
                stage = stage[piece.keep[start - piece.start:stop - piece.start]]
            convert(stage, out[pos:pos + len(stage)])
            pos += len(stage)


class Store:
    """A feature store snapshot: reads see the manifest as of open (or the last refresh/write)."""

    lock_timeout: float = 60.0

    def __init__(self, path: Path, manifest: Manifest):
        self._path = path
        self._manifest = manifest

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, *, dim: int, provenance: Provenance, classes=(),
               dtype: str = "float16") -> Store:
        """Create an empty store at `path` (a new or empty directory)."""
        path = Path(path)
        if dtype not in DTYPES:
            raise BadInput(f"store dtype {dtype!r} is not supported: use one of {DTYPES}")
        if provenance.dim != dim:
            raise BadInput(f"provenance says dim {provenance.dim} but the store has dim {dim}: "
                           "make them agree")
        classes = _extended((), classes)
        if path.exists() and not path.is_dir():
            raise BadInput(f"{path} exists and is not a directory: choose another store path")
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, Manifest.new(dim=dim, dtype=dtype, provenance=provenance,
                                       classes=classes))
        with store._locked():
            if (path / MANIFEST_NAME).exists():
                raise BadInput(f"{path} is already a store: open it instead of creating it")
            if any(p.name != LOCK_NAME for p in path.iterdir()):
                raise BadInput(f"{path} is not empty: create the store in a new directory")
            (path / SHARD_DIR).mkdir()
            store._manifest.save(path)
        log.info("created store %s (dim %d, %s)", path, dim, provenance.describe())
        return store

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open the store at `path` as a snapshot of its current manifest."""
        path = Path(path)
        return cls(path, Manifest.load(path))

    def refresh(self) -> Store:
        """Move this store to the newest manifest on disk (returns self)."""
        self._manifest = Manifest.load(self._path)
        return self

    # -- properties -------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def dtype(self) -> str:
        return self._manifest.dtype

    @property
    def classes(self) -> list[str]:
        return list(self._manifest.classes)

    @property
    def provenance(self) -> Provenance:
        return self._manifest.provenance

    @property
    def store_id(self) -> str:
        return self._manifest.store_id

    @property
    def generation(self) -> int:
        return self._manifest.generation

    @property
    def nbytes(self) -> int:
        """Bytes of shard data on disk."""
        return sum(s.nbytes for s in self._manifest.shards)

    def __len__(self) -> int:
        return self._manifest.rows

    def __repr__(self) -> str:
        return f"Store({str(self._path)!r}, rows={len(self)}, generation={self.generation})"

    # -- writing ----------------------------------------------------------------------------
    def _locked(self):
        """Hold the store's writer lock (a context manager); TipError after `lock_timeout`."""
        try:
            return FileLock(self._path / LOCK_NAME, timeout=self.lock_timeout).acquire()
        except Timeout as exc:
            raise TipError(
                f"store {self._path} is locked by another writer for over {self.lock_timeout:g} "
                "s: wait for the other import/encode to finish and retry"
            ) from exc

    def append(self, rows: Rows, *, provenance: Provenance | None = None,
               classes: Iterable[str] | None = None) -> np.ndarray:
        """Validate `rows` and add them as one new shard; returns their new int64 row ids.

        `provenance` (when given) must name the store's encoder. `classes` (when given) is
        the vocabulary the labels refer to; it must extend the store's and is adopted in the
        same atomic step. Nothing changes on error or when `rows` is empty.
        """
        with self._locked():
            manifest = Manifest.load(self._path)
            if classes is not None:  # adopted with the shard: one new generation, not two
                manifest = replace(manifest, classes=_extended(manifest.classes, classes))
            keys = IdKeys.of(rows.ids)
            self._validate(rows, keys, manifest, provenance)
            if not len(rows):
                return np.empty(0, dtype=np.int64)
            self._remove_orphans(manifest)
            first = manifest.next_row_id
            name = f"{first:012d}-{uuid.uuid4().hex[:8]}.h5"
            info = write_shard(self._path / SHARD_DIR / name, rows, first, manifest.dtype, keys)
            manifest = manifest.with_shard(info)
            manifest.save(self._path)
            self._manifest = manifest
        log.debug("appended %d rows to %s as %s", info.rows, self._path, name)
        return np.arange(first, first + info.rows, dtype=np.int64)

    def add_classes(self, names: Iterable[str]) -> list[int]:
        """Add the names not yet in the vocabulary; returns the label index of every name."""
        names = [str(n) for n in names]
        with self._locked():
            manifest = Manifest.load(self._path)
            new = [n for n in dict.fromkeys(names) if n not in manifest.classes]
            if new:
                manifest = manifest.with_classes(_extended(manifest.classes,
                                                           manifest.classes + tuple(new)))
                manifest.save(self._path)
            self._manifest = manifest
        index = {c: i for i, c in enumerate(manifest.classes)}
        return [index[n] for n in names]

    def _validate(self, rows: Rows, keys: IdKeys, manifest: Manifest,
                  provenance: Provenance | None) -> None:
        if provenance is not None:
            manifest.provenance.check_compatible(provenance)
        n = len(rows)
        if rows.features.ndim != 2 or rows.features.shape[1] != manifest.dim:
            raise BadInput(
                f"features have shape {rows.features.shape} but store {self._path} holds dim "
                f"{manifest.dim}: encode them with {manifest.provenance.describe()} or use "
                "another store"
            )
        _check_finite(rows.features, rows.ids, "features")
        if manifest.provenance.normalized:
            _check_normalised(rows.features, rows.ids, "features")
        if rows.views is not None:
            if rows.views.ndim != 3 or rows.views.shape[0] != n or \
                    rows.views.shape[2] != manifest.dim:
                raise BadInput(f"views have shape {rows.views.shape}, expected ({n}, V, "
                               f"{manifest.dim}): give V views of dim {manifest.dim} per row")
            _check_finite(rows.views, rows.ids, "views")
            if manifest.provenance.normalized:
                _check_normalised(rows.views, rows.ids, "views")
        k = len(manifest.classes)
        bad = (rows.labels < -1) | (rows.labels >= k)
        if bad.any():
            raise BadInput(
                f"labels of {_first_bad(bad, rows.ids)} are outside -1..{k - 1} (the store has "
                f"{k} classes): fix the labels or extend the class list (import --classes FILE)"
            )
        _check_strings(rows.ids, "id")
        if rows.sources is not None:
            _check_strings(rows.sources, "source")
        uniq, counts = np.unique(keys.encoded, return_counts=True)
        if (counts > 1).any():
            dups = uniq[counts > 1]
            raise BadInput(f"{len(dups)} ids occur more than once in the batch (e.g. "
                           f"{dups[0].decode()!r}): give every row a unique id")
        found = self._existing(manifest, keys)
        if found.any():
            raise BadInput(
                f"{_first_bad(found, rows.ids)} already exist in store {self._path}: "
                "skip rows that were imported before or give them new ids"
            )

    def _remove_orphans(self, manifest: Manifest) -> None:
        """Delete files a killed writer left behind (only ever called under the lock).

        Only names a writer makes are touched; other files in the store are left alone.
        """
        known = {s.name for s in manifest.shards}
        orphans = [p for p in (self._path / SHARD_DIR).iterdir()
                   if _WRITER_FILE.fullmatch(p.name) and p.name not in known]
        orphans += list(self._path.glob(f".{MANIFEST_NAME}.*.tmp"))
        for p in orphans:
            log.info("removing %s left by an interrupted write", p)
            p.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------
    def _existing(self, manifest: Manifest, keys: IdKeys) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for info in manifest.shards:
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            with ShardReader(self._path / SHARD_DIR, info) as shard:
                found[todo] = shard.locate(keys.take(todo)) >= 0
        return found

    def existing_ids(self, ids: Iterable[str]) -> np.ndarray:
        """A bool per id: True when the id is already in this snapshot."""
        return self._existing(self._manifest, IdKeys.of(ids))

    def _pieces(self, shards: list[ShardInfo], splits: set | None, label_set: set | None,
                ids: list | None) -> Iterator[_Piece]:
        """The matching rows of `shards` in store order: whole shards when nothing filters,
        else pieces of at most SCAN_ROWS rows (only the filtered columns are read)."""
        keys = None if ids is None else IdKeys.of(ids)
        for info in shards:
            if splits is None and label_set is None and keys is None:
                yield _Piece(info, 0, info.rows)
                continue
            with ShardReader(self._path / SHARD_DIR, info) as shard:
                rows = None
                if keys is not None:
                    located = shard.locate(keys)
                    rows = np.unique(located[located >= 0])
                    if not len(rows):
                        continue
                lo, hi = (0, info.rows) if rows is None else (int(rows[0]), int(rows[-1]) + 1)
                for start in range(lo, hi, SCAN_ROWS):
                    stop = min(start + SCAN_ROWS, hi)
                    keep = _keep(shard, start, stop, splits, label_set, rows)
                    if keep.all():
                        yield _Piece(info, start, stop)
                    elif keep.any():
                        yield _Piece(info, start, stop, keep)

    def _reader(self, columns: Iterable[str], features_dtype: str | None,
                with_views: bool) -> _BatchReader:
        want = frozenset([columns] if isinstance(columns, str) else columns)
        if want - set(COLUMNS) or "features" not in want:
            raise BadInput(
                f"columns {sorted(want)} are not a choice of {COLUMNS} that includes "
                "'features': name only those (views come with with_views=True)"
            )
        if features_dtype not in (None, *DTYPES):
            raise BadInput(f"features_dtype {features_dtype!r} is not supported: use one of "
                           f"{DTYPES} or None (as stored)")
        dtype = np.dtype(features_dtype or self._manifest.dtype)
        return _BatchReader(self._path / SHARD_DIR, self._manifest, want, dtype, with_views)

    def iter_rows(self, batch_size: int = 8192, *, split=None, labels=None, ids=None,
                  with_views: bool = False, columns: Iterable[str] = COLUMNS,
                  features_dtype: str | None = "float32") -> Iterator[Rows]:
        """Stream rows in store order, in batches of `batch_size`, with bounded memory.

        `split` (a name or names), `labels` (an index or indices) and `ids` (string ids)
        filter the rows; `with_views` also reads the stored views. `columns` names the
        fields to read (always 'features'); the others are None. `features_dtype` is the
        dtype of features and views: float32 (default), float16, or None for the on-disk
        dtype (no conversion; fastest). Batches never mix rows with and without views (or
        sources, when read). The snapshot is fixed when this is called.
        """
        if batch_size < 1:
            raise BadInput(f"batch size {batch_size} is not positive: give a size >= 1")
        reader = self._reader(columns, features_dtype, with_views)
        splits, label_set = _as_set(split, str), _as_set(labels, int)
        shards = [s for s in self._manifest.shards if _matching(s, splits, label_set)]
        pieces = self._pieces(shards, splits, label_set, None if ids is None else list(ids))
        sources = "sources" in reader.columns

        def key(info: ShardInfo) -> tuple:
            return (info.views if with_views else 0, info.has_sources and sources)

        def batches() -> Iterator[Rows]:
            try:
                for batch in _batches(pieces, batch_size, key):
                    yield reader.batch(batch)
            finally:
                reader.close()
        return batches()

    def select(self, *, split=None, labels=None, ids=None, with_views: bool = False,
               columns: Iterable[str] = COLUMNS, features_dtype: str | None = "float32") -> Rows:
        """All matching rows as one `Rows` (store order); loads them, so filter first."""
        splits, label_set = _as_set(split, str), _as_set(labels, int)
        most = sum(_matching(s, splits, label_set) for s in self._manifest.shards)
        if ids is not None:
            ids = list(ids)
            most = min(most, len(ids))
        parts = list(self.iter_rows(max(most, 1), split=split, labels=labels, ids=ids,
                                    with_views=with_views, columns=columns,
                                    features_dtype=features_dtype))
        if not parts:
            return self._reader(columns, features_dtype, with_views).batch([])
        return parts[0] if len(parts) == 1 else Rows.concat(parts)

    def labelled(self, split=None, with_views: bool = False) -> Rows:
        """The rows with a label (>= 0): Tip-Adapter's cache candidates."""
        return self.select(split=split, labels=range(len(self._manifest.classes)),
                           with_views=with_views)

    def class_counts(self, split=None) -> dict[str, int]:
        """Rows per class name (from the manifest; no shard is read)."""
        splits = _as_set(split, str)
        counts = dict.fromkeys(self._manifest.classes, 0)
        for info in self._manifest.shards:
            for s, by_label in info.counts.items():
                if splits is None or s in splits:
                    for label, n in by_label.items():
                        if label >= 0:
                            counts[self._manifest.classes[label]] += n
        return counts

    def split_counts(self) -> dict[str, int]:
        """Rows per split tag (from the manifest)."""
        out: dict[str, int] = {}
        for info in self._manifest.shards:
            for s, by_label in info.counts.items():
                out[s] = out.get(s, 0) + sum(by_label.values())
        return dict(sorted(out.items()))

    def verify(self) -> None:
        """Check every shard's presence, size and sha256; CorruptData names the first bad one."""
        shard_dir = self._path / SHARD_DIR
        with progress(self.nbytes, "verify", unit="B") as bar:
            for info in self._manifest.shards:
                verify_shard(shard_dir, info)
                bar.update(info.nbytes)
