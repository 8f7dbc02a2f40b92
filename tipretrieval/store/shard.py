"""One immutable HDF5 shard: written once (temp file, fsync, rename), then read in blocks.

Layout: `features` (N, D) and optional `views` (N, V, D) in the store dtype, uncompressed and
chunked by a few thousand rows; `labels` int64; `ids` and optional `sources` as fixed-width
UTF-8 bytes; `splits` as uint32 codes into the `split_names` list. Row ids are not stored: a
shard holds the consecutive ids starting at its `first_row_id` (kept in the manifest).
`id_hash` holds the sorted 64-bit blake2b hashes of the ids and `id_order` the row of each, so
duplicate checks read 16 bytes per stored row instead of every id (shards written before
these existed are scanned instead).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import CorruptData
from ..rows import Rows
from ..util.atomic import atomic_path
from ..util.checksum import file_sha256
from .float16 import as_float32
from .manifest import ShardInfo

CHUNK_ROWS = 4096
_CHUNK_BYTES = 4 << 20
_ID_BLOCK = 1 << 16


def encode(strings: np.ndarray) -> np.ndarray:
    """Strings as the fixed-width UTF-8 bytes array a shard stores."""
    return np.array([s.encode("utf-8") for s in strings], dtype="S")


def decode(raw: np.ndarray) -> np.ndarray:
    """Stored fixed-width UTF-8 bytes back to an object array of str."""
    return np.array([b.decode("utf-8") for b in raw.tolist()], dtype=object)


def id_hashes(encoded: np.ndarray) -> np.ndarray:
    """The 64-bit blake2b hash of every encoded id (uint64); equal ids hash equal."""
    digests = b"".join([hashlib.blake2b(b, digest_size=8).digest() for b in encoded.tolist()])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


@dataclass(frozen=True)
class IdKeys:
    """String ids as a shard stores them (fixed-width UTF-8) with their 64-bit hashes."""

    encoded: np.ndarray
    hashes: np.ndarray

    @classmethod
    def of(cls, ids: Iterable) -> IdKeys:
        encoded = encode(np.array([str(i) for i in ids], dtype=object))
        return cls(encoded, id_hashes(encoded))

    def take(self, index) -> IdKeys:
        return IdKeys(self.encoded[index], self.hashes[index])

    def __len__(self) -> int:
        return len(self.encoded)


def _chunk_rows(row_bytes: int, n: int) -> int:
    return max(1, min(n, CHUNK_ROWS, _CHUNK_BYTES // max(row_bytes, 1)))


def _counts(labels: np.ndarray, splits: np.ndarray) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    pairs = zip(splits.tolist(), labels.tolist(), strict=True)
    for (split, label), count in Counter(pairs).items():
        out.setdefault(split, {})[int(label)] = count
    return out


def write_shard(path: Path, rows: Rows, first_row_id: int, dtype: str,
                keys: IdKeys | None = None) -> ShardInfo:
    """Write `rows` (whose ids are `keys`) as a new shard at `path` (temp file, fsync, rename)
    and describe it."""
    n, dim = rows.features.shape
    split_names, split_codes = np.unique(rows.splits.astype(str), return_inverse=True)
    itemsize = np.dtype(dtype).itemsize
    keys = keys or IdKeys.of(rows.ids)
    order = np.argsort(keys.hashes, kind="stable")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=rows.features.astype(dtype),
                             chunks=(_chunk_rows(dim * itemsize, n), dim))
            f.create_dataset("labels", data=rows.labels.astype(np.int64))
            f.create_dataset("ids", data=keys.encoded, chunks=(_chunk_rows(0, n),))
            f.create_dataset("id_hash", data=keys.hashes[order])
            f.create_dataset("id_order", data=order.astype(np.int64))
            f.create_dataset("splits", data=split_codes.astype(np.uint32).reshape(-1))
            f.create_dataset("split_names", data=[str(s) for s in split_names],
                             dtype=h5py.string_dtype())
            if rows.sources is not None:
                f.create_dataset("sources", data=encode(rows.sources),
                                 chunks=(_chunk_rows(0, n),))
            if rows.views is not None:
                v = rows.views.shape[1]
                f.create_dataset("views", data=rows.views.astype(dtype),
                                 chunks=(_chunk_rows(v * dim * itemsize, n), v, dim))
        sha256, nbytes = file_sha256(tmp), tmp.stat().st_size
    return ShardInfo(
        name=path.name, rows=n, first_row_id=first_row_id, sha256=sha256, nbytes=nbytes,
        views=0 if rows.views is None else int(rows.views.shape[1]),
        has_sources=rows.sources is not None, counts=_counts(rows.labels, rows.splits),
    )


@dataclass
class Block:
    """Consecutive raw rows of one shard as stored (features in the on-disk dtype)."""

    row_ids: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    features: np.ndarray
    sources: np.ndarray | None
    views: np.ndarray | None

    def to_rows(self, mask: np.ndarray | None = None) -> Rows:
        """The (masked) rows decoded to `Rows`, features and views as float32."""
        def pick(a):
            return a if a is None or mask is None else a[mask]
        views = pick(self.views)
        sources = pick(self.sources)
        return Rows(
            ids=decode(pick(self.ids)), features=as_float32(pick(self.features)),
            labels=pick(self.labels), splits=pick(self.splits),
            sources=None if sources is None else decode(sources),
            views=None if views is None else as_float32(views),
            row_ids=pick(self.row_ids),
        )


class ShardReader:
    """An open shard; every failure is reported as CorruptData naming the shard."""

    def __init__(self, shard_dir: Path, info: ShardInfo):
        self.info = info
        self.path = shard_dir / info.name
        check_present(self.path, info)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise self._corrupt(f"cannot be read ({exc})") from exc
        try:
            self._split_names = np.array(
                [s.decode() for s in self._file["split_names"][()]], dtype=object)
        except (OSError, KeyError) as exc:
            self._file.close()
            raise self._corrupt(f"cannot be read ({exc})") from exc

    def _corrupt(self, problem: str) -> CorruptData:
        return CorruptData(
            f"shard {self.info.name} {problem}: run `tipretrieval info STORE --verify` and "
            "restore the shard from a backup or re-import its rows into a new store"
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[h5py.File]:
        try:
            yield self._file
        except (OSError, KeyError) as exc:
            raise self._corrupt(f"cannot be read ({exc})") from exc

    @property
    def split_names(self) -> np.ndarray:
        """The shard's split names (object array of str) indexed by the `splits` codes."""
        return self._split_names

    def read(self, start: int, stop: int, with_views: bool = False) -> Block:
        """Rows `start:stop` of the shard as a raw Block."""
        with self._reading() as f:
            return Block(
                row_ids=np.arange(start, stop, dtype=np.int64) + self.info.first_row_id,
                ids=f["ids"][start:stop], labels=f["labels"][start:stop],
                splits=self._split_names[f["splits"][start:stop]],
                features=f["features"][start:stop],
                sources=f["sources"][start:stop] if "sources" in f else None,
                views=f["views"][start:stop] if with_views and "views" in f else None,
            )

    def column(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` of dataset `name` as stored."""
        with self._reading() as f:
            return f[name][start:stop]

    def column_into(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Rows `start:stop` of dataset `name` straight into `out` (its stored dtype, no copy)."""
        with self._reading() as f:
            f[name].read_direct(out, np.s_[start:stop])

    def locate(self, keys: IdKeys) -> np.ndarray:
        """The local row of every id, -1 where the shard does not hold it."""
        encoded = keys.encoded
        with self._reading() as f:
            if "id_hash" not in f:
                return self._scan_ids(encoded)
            rows = np.full(len(encoded), -1, dtype=np.int64)
            stored = f["id_hash"][()]
            lo = np.searchsorted(stored, keys.hashes, "left")
            hits = np.searchsorted(stored, keys.hashes, "right") - lo
            if not hits.any():
                return rows
            query = np.repeat(np.arange(len(encoded)), hits)
            pos = np.arange(len(query)) - np.repeat(np.cumsum(hits) - hits, hits) + \
                np.repeat(lo, hits)
            candidates = f["id_order"][()][pos]
            same = self._ids_at(candidates) == encoded[query]  # confirm hash matches exactly
            rows[query[same]] = candidates[same]
            return rows

    def _ids_at(self, rows: np.ndarray) -> np.ndarray:
        """The encoded ids of the given rows, reading only the id blocks that hold them."""
        out = np.empty(len(rows), dtype=self._file["ids"].dtype)
        blocks = rows // _ID_BLOCK
        for b in np.unique(blocks):
            start = int(b) * _ID_BLOCK
            at = blocks == b
            out[at] = self.column("ids", start, start + _ID_BLOCK)[rows[at] - start]
        return out

    def _scan_ids(self, encoded: np.ndarray) -> np.ndarray:
        """`locate` for shards written without an id hash table: read every id once."""
        unique, inverse = np.unique(encoded, return_inverse=True)
        wanted = {b: i for i, b in enumerate(unique.tolist())}
        rows = np.full(len(unique), -1, dtype=np.int64)
        for start in range(0, self.info.rows, _ID_BLOCK):
            for j, b in enumerate(self.column("ids", start, start + _ID_BLOCK).tolist()):
                if (i := wanted.get(b)) is not None:
                    rows[i] = start + j
        return rows[inverse.reshape(-1)]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_present(path: Path, info: ShardInfo) -> None:
    """Raise CorruptData when a shard file is missing or has the wrong size."""
    fix = "restore it from a backup or re-import its rows into a new store"
    if not path.is_file():
        raise CorruptData(f"shard {info.name} is missing from {path.parent}: {fix}")
    size = path.stat().st_size
    if size != info.nbytes:
        raise CorruptData(
            f"shard {info.name} is truncated or changed ({size} bytes, expected {info.nbytes}): "
            f"{fix}"
        )


def verify_shard(shard_dir: Path, info: ShardInfo) -> None:
    """Raise CorruptData when a shard is missing, truncated or fails its checksum."""
    path = shard_dir / info.name
    check_present(path, info)
    if file_sha256(path) != info.sha256:
        raise CorruptData(
            f"shard {info.name} fails its sha256 checksum (corrupt): restore it from a backup "
            "or re-import its rows into a new store"
        )
