"""`Store`: a directory of immutable HDF5 shards named by one atomically replaced manifest.

Writers take a file lock, write a new shard beside its final name, rename it into place and
then replace the manifest; readers work from the manifest snapshot they opened, so they never
see a half-written shard and a killed writer leaves the old contents intact. Batches are read
by `reader.BatchReader`; rows are checked by `validate` before they are written. An append is
three steps (`stage`: check and name the shard; write it; `commit`: id index and manifest), so
that a writer holding the lock may write one shard elsewhere (the dump import's writer
process) while it stages the next.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import BadInput, TipError
from ..provenance import Provenance
from ..rows import Rows
from ..util.progress import progress
from . import id_index
from .compact import TARGET_BYTES, CompactResult, compact_shards, remove_replaced
from .lock import LOCK_NAME, LOCK_TIMEOUT, remove_lock_file, writer_lock
from .manifest import DTYPES, MANIFEST_NAME, Manifest, ShardInfo
from .reader import COLUMNS, BatchReader, matching
from .shard import IdKeys, ShardReader, check_present, verify_shard, write_shard
from .validate import DuplicateIds, check_rows, extended_classes, first_bad

log = logging.getLogger(__name__)

SHARD_DIR = "shards"
_WRITER_FILE = re.compile(r"\.?\d{12}-[0-9a-f]+\.h5(\..+\.tmp)?")  # shards and their temps
_INDEX_FILE = re.compile(r"\.?ids-\d{12}\.idx(\..+\.tmp)?")  # id indexes and their temps
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_error(exc: OSError, path: Path) -> TipError:
    """A one-line TipError for an OSError met while writing the store at `path`: BadInput
    (exit 2) for permissions, TipError (exit 1) for a full disk and other I/O errors."""
    text = " ".join(str(exc).split())
    if exc.errno in _DENIED or "ermission denied" in text:
        return BadInput(f"cannot write to store {path} ({text}); nothing was stored",
                        "check its permissions or write to another store")
    if exc.errno in _FULL or "No space left" in text:
        return TipError(f"disk full while writing store {path} ({text}): free space and rerun; "
                        "nothing was stored")
    return TipError(f"I/O error while writing store {path} ({text}): check the disk and "
                    "rerun; nothing was stored")


def check_can_create(path: Path) -> None:
    """BadInput unless `path` is missing, or a directory with nothing but a killed create."""
    if path.exists() and not path.is_dir():
        raise BadInput(f"{path} exists and is not a directory: choose another store path")
    if not path.is_dir():
        return
    shards = path / SHARD_DIR
    empty_shards = shards.is_dir() and not any(shards.iterdir())  # a killed create
    if any(p.name != LOCK_NAME and not (p == shards and empty_shards) for p in path.iterdir()):
        raise BadInput(f"{path} is not empty: create the store in a new directory")


def _as_set(value, kind) -> set | None:
    if value is None:
        return None
    if isinstance(value, (str, int, np.integer)):
        value = [value]
    return {kind(v) for v in value}


@dataclass(frozen=True, eq=False)
class Staged:
    """An append checked against the store as it will be once the appends staged before it
    commit: the shard to write (`path`, rows, their first row id and the store's dtype) and
    the vocabulary it is committed with."""

    rows: Rows
    keys: IdKeys
    path: Path
    first_row_id: int
    dtype: str
    classes: tuple[str, ...]


def _keys(ids: Iterable[str] | IdKeys, manifest: Manifest) -> IdKeys:
    """`ids` hashed by the store's id hash (`IdKeys` given must have been)."""
    if not isinstance(ids, IdKeys):
        return IdKeys.of(ids, manifest.id_hash)
    if ids.algorithm != manifest.id_hash:
        raise ValueError(f"ids hashed by {ids.algorithm}, the store's are {manifest.id_hash}")
    return ids


def _stat_key(path: Path) -> tuple | None:
    """What tells a replaced file from the one seen before (a replacement is a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


class Store:
    """A feature store snapshot: reads see the manifest as of open (or the last refresh/write).

    `lock_timeout`: seconds this instance's writes wait for another writer (then StoreLocked).
    """

    def __init__(self, path: Path, manifest: Manifest, lock_timeout: float = LOCK_TIMEOUT):
        self._path = path
        self._manifest = manifest
        self.lock_timeout = lock_timeout
        self._id_runs: dict[str, id_index.Run] = {}  # id index runs read and checked (`id_index`)
        self._disk: tuple[tuple | None, Manifest] | None = None  # the file as last read/written

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, *, dim: int, provenance: Provenance, classes=(),
               dtype: str = "float16", lock_timeout: float = LOCK_TIMEOUT) -> Store:
        """Create an empty store at `path` (a new or empty directory)."""
        path = Path(path)
        if dtype not in DTYPES:
            raise BadInput(f"store dtype {dtype!r} is not supported: use one of {DTYPES}")
        if provenance.dim != dim:
            raise BadInput(f"provenance says dim {provenance.dim} but the store has dim {dim}: "
                           "make them agree")
        classes = extended_classes((), classes)
        if not (path / MANIFEST_NAME).exists():
            check_can_create(path)  # before the lock file is made in a directory we refuse
        store = cls(path, Manifest.new(dim=dim, dtype=dtype, provenance=provenance,
                                       classes=classes), lock_timeout)
        with store._locked():
            if (path / MANIFEST_NAME).exists():
                raise BadInput(f"{path} is already a store: open it instead of creating it")
            check_can_create(path)
            try:
                (path / SHARD_DIR).mkdir(exist_ok=True)
                store._manifest.save(path)
            except OSError as exc:
                raise write_error(exc, path) from exc
        log.info("created store %s (dim %d, %s)", path, dim, provenance.describe())
        return store

    @staticmethod
    @contextlib.contextmanager
    def writing(path: Path | str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the writer lock of the store at `path` (made with its folder when missing) so
        that several steps (create, then append) are one; StoreLocked after `timeout` s."""
        path = Path(path)
        try:
            with writer_lock(path, timeout):
                yield
        except OSError as exc:
            raise write_error(exc, path) from exc

    @staticmethod
    def discard(path: Path | str, remove_dir: bool) -> None:
        """Remove a store that the caller created and filled under one `writing()` hold (so
        nobody else can have committed to it), with the folder too when `remove_dir`."""
        path = Path(path)
        (path / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(path / SHARD_DIR, ignore_errors=True)
        for p in path.iterdir() if path.is_dir() else ():
            if _INDEX_FILE.fullmatch(p.name) or p.name.startswith(f".{MANIFEST_NAME}."):
                p.unlink(missing_ok=True)
        remove_lock_file(path)
        if remove_dir:
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty: never someone else's files

    @classmethod
    def open(cls, path: Path | str, *, lock_timeout: float = LOCK_TIMEOUT) -> Store:
        """Open the store at `path` as a snapshot of its current manifest."""
        path = Path(path)
        return cls(path, Manifest.load(path), lock_timeout)

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
        return self.writing(self._path, self.lock_timeout)

    def append(self, rows: Rows, *, provenance: Provenance | None = None,
               classes: Iterable[str] | None = None, keys: IdKeys | None = None,
               norms: np.ndarray | None = None) -> np.ndarray:
        """Validate `rows` and add them as one new shard; returns their new int64 row ids.

        `provenance` (when given) must name the store's encoder. `classes` (when given) is
        the vocabulary the labels refer to; it must extend the store's and is adopted in the
        same atomic step. `keys` (`IdKeys.of(rows.ids)`) and `norms` (`normalise.row_norms`
        of the features) may be given by a caller that has them, so they are computed once.
        Nothing changes on error or when `rows` is empty.
        """
        with self._locked():
            staged = self.stage(rows, provenance=provenance, classes=classes, keys=keys,
                                norms=norms)
            if staged is None:
                return np.empty(0, dtype=np.int64)
            return self.commit(staged, self.write(staged))

    def stage(self, rows: Rows, *, provenance: Provenance | None = None,
              classes: Iterable[str] | None = None, keys: IdKeys | None = None,
              norms: np.ndarray | None = None, after: Staged | None = None) -> Staged | None:
        """Check `rows` for an `append` (same arguments) and name their shard; None when
        `rows` is empty. `after`: an append staged but not committed yet, which this one
        follows (its ids count as stored, its vocabulary is extended). Call under `writing`
        and commit staged appends in order; with nothing staged before, the files a killed
        writer left are removed here."""
        with self._locked():  # (after `after`: the caller held the lock since, and committed)
            manifest = self._latest() if after is None else self._manifest
            vocabulary = manifest.classes if after is None else after.classes
            if classes is not None:
                vocabulary = extended_classes(vocabulary, classes)
            keys = _keys(rows.ids if keys is None else keys, manifest)
            check_rows(rows, keys, replace(manifest, classes=vocabulary), provenance,
                       self._path, norms)
            if not len(rows):
                return None
            found = self._existing(manifest, keys, self._id_index(manifest))
            if after is not None:
                found |= keys.among(after.keys)
            if found.any():
                raise DuplicateIds(
                    f"{first_bad(found, rows.ids)} already exist in store {self._path}: "
                    "skip rows that were imported before or give them new ids"
                )
            if after is None:
                try:
                    self._remove_orphans(manifest)
                except OSError as exc:
                    raise write_error(exc, self._path) from exc
            first = manifest.next_row_id if after is None else \
                after.first_row_id + len(after.rows)
            name = f"{first:012d}-{uuid.uuid4().hex[:8]}.h5"
            return Staged(rows, keys, self._path / SHARD_DIR / name, first, manifest.dtype,
                          vocabulary)

    def write(self, staged: Staged) -> ShardInfo:
        """Write the shard of `staged` in this process (`write_shard`); on an OSError nothing
        is left and the error is a one-line TipError (`abandon`)."""
        try:
            return write_shard(staged.path, staged.rows, staged.first_row_id, staged.dtype,
                               staged.keys)
        except OSError as exc:
            raise self.abandon(staged, exc) from exc

    def abandon(self, staged: Staged, exc: OSError) -> TipError:
        """Remove what writing `staged` left (its shard, its id index run) and return the
        one-line error to raise for `exc` (`write_error`)."""
        staged.path.unlink(missing_ok=True)
        with contextlib.suppress(BadInput, OSError):
            (self._path / id_index.name(Manifest.load(self._path).generation + 1)).unlink(
                missing_ok=True)
        return write_error(exc, self._path)

    def _latest(self) -> Manifest:
        """The manifest on disk now (under the writer lock), read again only when the file
        changed since this store last read or wrote it: an import commits once a chunk, and
        reading back the manifest it had just written took longer than writing it."""
        key = _stat_key(self._path / MANIFEST_NAME)
        if key is None or self._disk is None or self._disk[0] != key:
            self._disk = key, Manifest.load(self._path)
        return self._disk[1]

    def _save(self, manifest: Manifest) -> None:
        manifest.save(self._path)
        self._disk = _stat_key(self._path / MANIFEST_NAME), manifest

    def commit(self, staged: Staged, info: ShardInfo) -> np.ndarray:
        """Make the written shard of `staged` (described by `info`) part of the store: its ids
        join the id index and a new manifest names it; returns the rows' new row ids. On an
        OSError nothing changes (`abandon`)."""
        with self._locked():
            manifest = self._latest()
            assert manifest.next_row_id == staged.first_row_id, "commit appends in order"
            manifest = replace(manifest, classes=staged.classes)
            try:
                index = id_index.appended(self._path, self._id_index(manifest), staged.keys,
                                          staged.first_row_id, manifest.generation + 1)
                old, manifest = manifest, manifest.with_shard(info, index.files)
                self._save(manifest)
            except OSError as exc:  # (a full disk): leave the store as it was
                raise self.abandon(staged, exc) from exc
            self._manifest = manifest
            id_index.remember(self._id_runs, index)
            self._remove_replaced_runs(old, index)
        log.debug("appended %d rows to %s as %s", info.rows, self._path, info.name)
        return np.arange(staged.first_row_id, staged.first_row_id + info.rows, dtype=np.int64)

    def compact(self, target_bytes: int = TARGET_BYTES) -> CompactResult:
        """Merge runs of small consecutive shards into shards of up to `target_bytes` (see
        `compact`) and the id index runs into one: same rows, row ids, ids and stored values;
        atomic under the writer lock."""
        if target_bytes < 1:
            raise BadInput(f"target size {target_bytes} is not positive: give a size in bytes")
        with self._locked():
            manifest = Manifest.load(self._path)
            try:
                self._remove_orphans(manifest)
                new, old = compact_shards(self._path, self._path / SHARD_DIR, manifest,
                                          target_bytes)
                index = self._id_index(manifest)
                if index.files != manifest.id_runs or len(index.files) > 1:  # merge the runs
                    index = id_index.merge_all(self._path, index, manifest.generation + 1)
                    new = replace(new, generation=manifest.generation + 1, id_runs=index.files)
                if new is not manifest:
                    new.save(self._path)
            except BaseException as exc:
                self._remove_orphans(Manifest.load(self._path))  # the merged shards written
                if isinstance(exc, OSError):
                    raise write_error(exc, self._path) from exc
                raise
            remove_replaced(old)  # only now: the manifest no longer names them
            self._remove_replaced_runs(manifest, index)
            self._manifest = new
            id_index.remember(self._id_runs, index)
        return CompactResult(shards_before=len(manifest.shards), shards_after=len(new.shards),
                             merged=len(old), generation=new.generation)

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

    def _remove_orphans(self, manifest: Manifest) -> None:
        """Delete files a killed writer left behind (only ever called under the lock).

        Only names a writer makes are touched; other files in the store are left alone.
        """
        for p in self.orphans(manifest):
            log.info("removing %s left by an interrupted write", p)
            p.unlink(missing_ok=True)

    def orphans(self, manifest: Manifest | None = None) -> list[Path]:
        """Files a killed (or running) writer left that `manifest` (default: this snapshot's)
        does not name: shards, id indexes and their temporary files."""
        manifest = manifest or self._manifest
        known = {s.name for s in manifest.shards} | {r.name for r in manifest.id_runs}
        shard_dir = self._path / SHARD_DIR
        found = [p for p in shard_dir.iterdir() if _WRITER_FILE.fullmatch(p.name)] \
            if shard_dir.is_dir() else []
        found += [p for p in self._path.iterdir() if _INDEX_FILE.fullmatch(p.name)]
        found += list(self._path.glob(f".{MANIFEST_NAME}.*.tmp"))
        return sorted(p for p in found if p.name not in known)

    # -- reading ----------------------------------------------------------------------------
    def _remove_replaced_runs(self, old: Manifest, index: id_index.IdIndex) -> None:
        """Delete the id index runs of `old` that the saved manifest (of `index`) no longer
        names; any left (a kill) are orphans that the next write removes."""
        for info in set(old.id_runs) - set(index.files):
            (self._path / info.name).unlink(missing_ok=True)

    def _id_index(self, manifest: Manifest) -> id_index.IdIndex:
        """The manifest's id index, rebuilt from the shards' ids when missing or damaged."""
        index = id_index.load(self._path, manifest, self._id_runs)
        if index is not None:
            return index
        hashes, rows = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
        for info in manifest.shards:
            with self._shard(info, manifest) as shard:
                for start in range(0, info.rows, 1 << 16):
                    keys = IdKeys.of(shard.strings("ids", start, start + (1 << 16)),
                                     manifest.id_hash)
                    hashes.append(keys.hashes)
                    rows.append(np.arange(len(keys), dtype=np.int64) + info.first_row_id + start)
        return id_index.IdIndex((id_index.build(np.concatenate(hashes), np.concatenate(rows)),),
                                ())

    def _shard(self, info, manifest: Manifest | None = None) -> ShardReader:
        return ShardReader(self._path / SHARD_DIR, info, (manifest or self._manifest).dim)

    def _existing(self, manifest: Manifest, keys: IdKeys,
                  index: id_index.IdIndex | None) -> np.ndarray:
        """Which ids `manifest` holds: through the id index (opening only the shards of hash
        hits to confirm them), or by asking every shard when there is no index."""
        found = np.zeros(len(keys), dtype=bool)
        if index is None:
            for info in manifest.shards:
                todo = np.flatnonzero(~found)
                if not len(todo):
                    break
                with self._shard(info, manifest) as shard:
                    found[todo] = shard.locate(keys.take(todo)) >= 0
            return found
        query, row_ids = index.candidates(keys)
        starts = np.array([s.first_row_id for s in manifest.shards], dtype=np.int64)
        which = np.searchsorted(starts, row_ids, "right") - 1
        for k in np.unique(which).tolist():
            info, at = manifest.shards[k], which == k
            with self._shard(info, manifest) as shard:
                stored = shard.ids_at(row_ids[at] - info.first_row_id)
            found[query[at][stored == keys.encoded[query[at]]]] = True
        return found

    def existing_ids(self, ids: Iterable[str] | IdKeys) -> np.ndarray:
        """A bool per id (given as strings or `IdKeys`): True when the id is already in this
        snapshot."""
        keys = _keys(ids, self._manifest)
        return self._existing(self._manifest, keys,
                              id_index.load(self._path, self._manifest, self._id_runs))

    def _reader(self, columns: Iterable[str], features_dtype: str | None,
                with_views: bool) -> BatchReader:
        return BatchReader(self._path / SHARD_DIR, self._manifest, columns, features_dtype,
                           with_views)

    def iter_rows(self, batch_size: int = 8192, *, split=None, labels=None, ids=None,
                  row_ids=None, with_views: bool = False, columns: Iterable[str] = COLUMNS,
                  features_dtype: str | None = "float32",
                  workers: int | None = None) -> Iterator[Rows]:
        """Stream rows in store order, in batches of `batch_size`, with bounded memory.

        `split` (a name or names), `labels` (an index or indices), `ids` (string ids) and
        `row_ids` (int64 row ids) filter the rows; `with_views` also reads the stored views.
        `columns` names the fields to read (always 'features'); the others are None.
        `features_dtype` is the dtype of features and views: float32 (default), float16,
        or None for the on-disk dtype (no conversion; fastest). Batches never mix rows with
        and without views (or sources, when read). The snapshot is fixed when this is called.
        `workers` worker processes read and check the features in parallel (same batches;
        0: none; None: for reads of 256 MB of features or more, one per CPU but one on
        machines of three CPUs or more).
        """
        if batch_size < 1:
            raise BadInput(f"batch size {batch_size} is not positive: give a size >= 1")
        if workers is not None and workers < 0:
            raise BadInput(f"workers={workers} is negative: give 0 (read in this process), "
                           "a number of worker processes, or None (automatic)")
        reader = self._reader(columns, features_dtype, with_views)
        wanted = None if row_ids is None else np.unique(np.asarray(row_ids, dtype=np.int64))
        return reader.read(batch_size, _as_set(split, str), _as_set(labels, int),
                           None if ids is None else list(ids), wanted, workers)

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
            with self._shard(info) as shard:
                block = shard.read(lo - info.first_row_id, hi - info.first_row_id)
                shard.check_features(lo - info.first_row_id, block.features,
                                     self.provenance.normalized)
                shard.check_labels(block.labels, len(self._manifest.classes))
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

    def check_files(self) -> None:
        """Check that every shard exists with its recorded size (a stat each; CorruptData)."""
        for info in self._manifest.shards:
            check_present(self._path / SHARD_DIR / info.name, info)

    def verify(self) -> None:
        """Check every shard's and id index run's presence, size and checksum; CorruptData names
        the first bad one."""
        shard_dir = self._path / SHARD_DIR
        with progress(self.nbytes, "verify", unit="B") as bar:
            for info in self._manifest.shards:
                verify_shard(shard_dir, info)
                bar.update(info.nbytes)
        id_index.verify(self._path, self._manifest)
