"""`Store`: a directory of immutable HDF5 shards named by one atomically replaced manifest.

Writers take a file lock, write a new shard beside its final name, rename it into place and
then replace the manifest; readers work from the manifest snapshot they opened, so they never
see a half-written shard and a killed writer leaves the old contents intact.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from .errors import BadInput, TipError
from .manifest import DTYPES, MANIFEST_NAME, Manifest, ShardInfo
from .progress import progress
from .provenance import Provenance
from .rows import Rows
from .shard import CHUNK_ROWS, Block, ShardReader, verify_shard, write_shard

log = logging.getLogger(__name__)

NORM_TOLERANCE = 2e-3
SHARD_DIR = "shards"
LOCK_NAME = ".lock"


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


def _rebatch(parts: Iterator[tuple[tuple, Rows]], batch_size: int) -> Iterator[Rows]:
    """Regroup row parts into batches of exactly `batch_size` (the last may be smaller).

    Parts with different keys (view count, sources present) are never mixed in one batch.
    """
    pending: list[Rows] = []
    count, key = 0, None
    for part_key, part in parts:
        if not len(part):
            continue
        if pending and part_key != key:
            yield Rows.concat(pending)
            pending, count = [], 0
        key = part_key
        pending.append(part)
        count += len(part)
        while count >= batch_size:
            joined = pending[0] if len(pending) == 1 else Rows.concat(pending)
            yield joined.take(slice(0, batch_size))
            rest = joined.take(slice(batch_size, None))
            pending, count = ([rest] if len(rest) else []), len(rest)
    if pending:
        yield Rows.concat(pending)


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
            self._validate(rows, manifest, provenance)
            if not len(rows):
                return np.empty(0, dtype=np.int64)
            self._remove_orphans(manifest)
            first = manifest.next_row_id
            name = f"{first:012d}-{uuid.uuid4().hex[:8]}.h5"
            info = write_shard(self._path / SHARD_DIR / name, rows, first, manifest.dtype)
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

    def _validate(self, rows: Rows, manifest: Manifest, provenance: Provenance | None) -> None:
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
        uniq, counts = np.unique(rows.ids.astype(str), return_counts=True)
        if (counts > 1).any():
            dups = uniq[counts > 1]
            raise BadInput(f"{len(dups)} ids occur more than once in the batch (e.g. "
                           f"{dups[0]!r}): give every row a unique id")
        found = self._existing(manifest, rows.ids)
        if found.any():
            raise BadInput(
                f"{_first_bad(found, rows.ids)} already exist in store {self._path}: "
                "skip rows that were imported before or give them new ids"
            )

    def _remove_orphans(self, manifest: Manifest) -> None:
        """Delete files a killed writer left behind (only ever called under the lock)."""
        known = {s.name for s in manifest.shards}
        orphans = [p for p in (self._path / SHARD_DIR).iterdir() if p.name not in known]
        orphans += list(self._path.glob(f".{MANIFEST_NAME}.*.tmp"))
        for p in orphans:
            log.info("removing %s left by an interrupted write", p)
            p.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------
    def _existing(self, manifest: Manifest, ids: Iterable[str]) -> np.ndarray:
        ids = np.asarray(list(ids), dtype=object)
        wanted = {str(i).encode("utf-8") for i in ids}
        found: set[bytes] = set()
        for info in manifest.shards:
            if len(found) == len(wanted):
                break
            with ShardReader(self._path / SHARD_DIR, info) as shard:
                for start in range(0, info.rows, 16 * CHUNK_ROWS):
                    chunk = shard.read_ids(start, start + 16 * CHUNK_ROWS)
                    found.update(b for b in chunk.tolist() if b in wanted)
        return np.array([str(i).encode("utf-8") in found for i in ids], dtype=bool)

    def existing_ids(self, ids: Iterable[str]) -> np.ndarray:
        """A bool per id: True when the id is already in this snapshot."""
        return self._existing(self._manifest, ids)

    def _blocks(self, shards: list[ShardInfo], block_rows: int,
                with_views: bool) -> Iterator[Block]:
        for info in shards:
            with ShardReader(self._path / SHARD_DIR, info) as shard:
                for start in range(0, info.rows, block_rows):
                    yield shard.read(start, min(start + block_rows, info.rows), with_views)

    def iter_rows(self, batch_size: int = 8192, *, split=None, labels=None, ids=None,
                  with_views: bool = False) -> Iterator[Rows]:
        """Stream rows in store order, in batches of `batch_size`, with bounded memory.

        `split` (a name or names), `labels` (an index or indices) and `ids` (string ids)
        filter the rows; `with_views` also reads the stored views. Batches never mix rows
        with and without views or sources. The snapshot is fixed when this is called.
        """
        if batch_size < 1:
            raise BadInput(f"batch size {batch_size} is not positive: give a size >= 1")
        splits, label_set = _as_set(split, str), _as_set(labels, int)
        wanted = None if ids is None else {str(i).encode("utf-8") for i in ids}

        def may_match(info: ShardInfo) -> bool:
            return any((splits is None or s in splits) and
                       (label_set is None or any(lab in label_set for lab in c))
                       for s, c in info.counts.items())

        shards = [s for s in self._manifest.shards if may_match(s)]
        block_rows = -(-batch_size // CHUNK_ROWS) * CHUNK_ROWS

        def parts() -> Iterator[tuple[tuple, Rows]]:
            for block in self._blocks(shards, block_rows, with_views):
                mask = np.ones(len(block.labels), dtype=bool)
                if splits is not None:
                    mask &= np.isin(block.splits, list(splits))
                if label_set is not None:
                    mask &= np.isin(block.labels, list(label_set))
                if wanted is not None:
                    mask &= np.fromiter((b in wanted for b in block.ids.tolist()), bool,
                                        len(block.ids))
                key = (0 if block.views is None else block.views.shape[1],
                       block.sources is not None)
                yield key, block.to_rows(None if mask.all() else mask)

        return _rebatch(parts(), batch_size)

    def select(self, *, split=None, labels=None, ids=None, with_views: bool = False) -> Rows:
        """All matching rows as one `Rows` (store order); loads them, so filter first."""
        parts = list(self.iter_rows(1 << 16, split=split, labels=labels, ids=ids,
                                    with_views=with_views))
        if not parts:
            empty = np.empty(0, dtype=object)
            return Rows(ids=empty, features=np.empty((0, self.dim), np.float32),
                        labels=np.empty(0, np.int64), splits=empty.copy(),
                        row_ids=np.empty(0, np.int64))
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
