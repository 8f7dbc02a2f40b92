"""`Store`: a directory of immutable HDF5 shards named by one atomically replaced manifest.

Writers take a file lock, write a new shard beside its final name, rename it into place and
then replace the manifest; readers work from the manifest snapshot they opened, so they never
see a half-written shard and a killed writer leaves the old contents intact. Batches are read
by `reader.BatchReader`; rows are checked by `validate` before they are written.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from ..errors import BadInput, StoreLocked
from ..provenance import Provenance
from ..rows import Rows
from ..util.progress import progress
from .manifest import DTYPES, MANIFEST_NAME, Manifest
from .reader import COLUMNS, BatchReader, matching
from .shard import IdKeys, ShardReader, verify_shard, write_shard
from .validate import check_rows, extended_classes, first_bad

log = logging.getLogger(__name__)

SHARD_DIR = "shards"
LOCK_NAME = ".lock"
_WRITER_FILE = re.compile(r"\.?\d{12}-[0-9a-f]+\.h5(\..+\.tmp)?")  # shards and their temps


def _as_set(value, kind) -> set | None:
    if value is None:
        return None
    if isinstance(value, (str, int, np.integer)):
        value = [value]
    return {kind(v) for v in value}


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
        classes = extended_classes((), classes)
        if path.exists() and not path.is_dir():
            raise BadInput(f"{path} exists and is not a directory: choose another store path")
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, Manifest.new(dim=dim, dtype=dtype, provenance=provenance,
                                       classes=classes))
        with store._locked():
            if (path / MANIFEST_NAME).exists():
                raise BadInput(f"{path} is already a store: open it instead of creating it")
            shards = path / SHARD_DIR
            empty_shards = shards.is_dir() and not any(shards.iterdir())  # a killed create
            if any(p.name != LOCK_NAME and not (p == shards and empty_shards)
                   for p in path.iterdir()):
                raise BadInput(f"{path} is not empty: create the store in a new directory")
            shards.mkdir(exist_ok=True)
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
        """Hold the store's writer lock (a context manager); StoreLocked after `lock_timeout`."""
        try:
            return FileLock(self._path / LOCK_NAME, timeout=self.lock_timeout).acquire()
        except Timeout as exc:
            raise StoreLocked(
                f"store {self._path} is locked by another writer for over {self.lock_timeout:g} s",
                "wait for the other import/encode to finish and retry"
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
                manifest = replace(manifest, classes=extended_classes(manifest.classes, classes))
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
                manifest = manifest.with_classes(extended_classes(manifest.classes,
                                                           manifest.classes + tuple(new)))
                manifest.save(self._path)
            self._manifest = manifest
        index = {c: i for i, c in enumerate(manifest.classes)}
        return [index[n] for n in names]

    def _validate(self, rows: Rows, keys: IdKeys, manifest: Manifest,
                  provenance: Provenance | None) -> None:
        check_rows(rows, keys, manifest, provenance, self._path)
        found = self._existing(manifest, keys)
        if found.any():
            raise BadInput(
                f"{first_bad(found, rows.ids)} already exist in store {self._path}: "
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

    def _reader(self, columns: Iterable[str], features_dtype: str | None,
                with_views: bool) -> BatchReader:
        return BatchReader(self._path / SHARD_DIR, self._manifest, columns, features_dtype,
                           with_views)

    def iter_rows(self, batch_size: int = 8192, *, split=None, labels=None, ids=None,
                  row_ids=None, with_views: bool = False, columns: Iterable[str] = COLUMNS,
                  features_dtype: str | None = "float32") -> Iterator[Rows]:
        """Stream rows in store order, in batches of `batch_size`, with bounded memory.

        `split` (a name or names), `labels` (an index or indices), `ids` (string ids) and
        `row_ids` (int64 row ids) filter the rows; `with_views` also reads the stored views.
        `columns` names the fields to read (always 'features'); the others are None.
        `features_dtype` is the dtype of features and views: float32 (default), float16,
        or None for the on-disk dtype (no conversion; fastest). Batches never mix rows with
        and without views (or sources, when read). The snapshot is fixed when this is called.
        """
        if batch_size < 1:
            raise BadInput(f"batch size {batch_size} is not positive: give a size >= 1")
        reader = self._reader(columns, features_dtype, with_views)
        wanted = None if row_ids is None else np.unique(np.asarray(row_ids, dtype=np.int64))
        return reader.read(batch_size, _as_set(split, str), _as_set(labels, int),
                           None if ids is None else list(ids), wanted)

    def select(self, *, split=None, labels=None, ids=None, row_ids=None, with_views: bool = False,
               columns: Iterable[str] = COLUMNS, features_dtype: str | None = "float32") -> Rows:
        """All matching rows as one `Rows` (store order); loads them, so filter first."""
        splits, label_set = _as_set(split, str), _as_set(labels, int)
        most = sum(matching(s, splits, label_set) for s in self._manifest.shards)
        if ids is not None:
            ids = list(ids)
            most = min(most, len(ids))
        if row_ids is not None:
            row_ids = np.asarray(row_ids, dtype=np.int64)
            most = min(most, len(row_ids))
        parts = list(self.iter_rows(max(most, 1), split=split, labels=labels, ids=ids,
                                    row_ids=row_ids, with_views=with_views, columns=columns,
                                    features_dtype=features_dtype))
        if not parts:
            return self._reader(columns, features_dtype, with_views).batch([])
        return parts[0] if len(parts) == 1 else Rows.concat(parts)

    def read_range(self, start: int, stop: int, *, split: str | None = None) -> Rows:
        """The rows (of `split`, or all) whose row ids lie in `[start, stop)`, in row-id order.

        Only the shards overlapping the range are opened: the unit of work of jobs that cut a
        store into row-id ranges (classify parts).
        """
        pieces = []
        for info in self._manifest.shards:
            lo, hi = max(start, info.first_row_id), min(stop, info.first_row_id + info.rows)
            if lo >= hi or (split is not None and split not in info.counts):
                continue
            with ShardReader(self._path / SHARD_DIR, info) as shard:
                block = shard.read(lo - info.first_row_id, hi - info.first_row_id)
            pieces.append(block.to_rows(None if split is None else block.splits == split))
        if not pieces:
            return Rows.make([], np.empty((0, self.dim), np.float32), row_ids=np.empty(0))
        return pieces[0] if len(pieces) == 1 else Rows.concat(pieces)

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
