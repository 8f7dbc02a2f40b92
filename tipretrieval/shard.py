"""One immutable HDF5 shard: written once (temp file, fsync, rename), then read in blocks.

Layout: `features` (N, D) and optional `views` (N, V, D) in the store dtype, uncompressed and
chunked by a few thousand rows; `labels` int64; `ids` and optional `sources` as fixed-width
UTF-8 bytes; `splits` as uint32 codes into the `split_names` list. Row ids are not stored: a
shard holds the consecutive ids starting at its `first_row_id` (kept in the manifest).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .errors import CorruptData
from .manifest import ShardInfo
from .rows import Rows

CHUNK_ROWS = 4096
_CHUNK_BYTES = 4 << 20
_HASH_BLOCK = 4 << 20


def _encode(strings: np.ndarray) -> np.ndarray:
    return np.array([s.encode("utf-8") for s in strings], dtype="S")


def _decode(raw: np.ndarray) -> np.ndarray:
    return np.array([b.decode("utf-8") for b in raw.tolist()], dtype=object)


_F16_MASK = np.int32(-0x70002000)  # 0x8FFFE000: float32 sign, 5 exponent and 10 mantissa bits
_F16_SCALE = np.float32(2.0**112)  # float16 -> float32 exponent bias difference (127 - 15)


def as_float32(x: np.ndarray) -> np.ndarray:
    """`x` as float32; float16 goes through a bit trick about twice as fast as numpy's cast.

    The float16 bits are placed in float32's sign/exponent/mantissa positions and the result
    scaled by 2**112, which is exact for every finite float16 (subnormals included); the
    store only ever holds finite values.
    """
    if x.dtype != np.float16:
        return x.astype(np.float32)
    bits = x.view(np.int16).astype(np.int32)
    bits <<= 13
    bits &= _F16_MASK
    out = bits.view(np.float32)
    out *= _F16_SCALE
    return out


def _chunk_rows(row_bytes: int, n: int) -> int:
    return max(1, min(n, CHUNK_ROWS, _CHUNK_BYTES // max(row_bytes, 1)))


def _counts(labels: np.ndarray, splits: np.ndarray) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    pairs = zip(splits.tolist(), labels.tolist(), strict=True)
    for (split, label), count in Counter(pairs).items():
        out.setdefault(split, {})[int(label)] = count
    return out


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks so memory stays small."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, rows: Rows, first_row_id: int, dtype: str) -> ShardInfo:
    """Write `rows` as a new shard at `path` (temp file, fsync, rename) and describe it."""
    n, dim = rows.features.shape
    split_names, split_codes = np.unique(rows.splits.astype(str), return_inverse=True)
    itemsize = np.dtype(dtype).itemsize
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=rows.features.astype(dtype),
                             chunks=(_chunk_rows(dim * itemsize, n), dim))
            f.create_dataset("labels", data=rows.labels.astype(np.int64))
            f.create_dataset("ids", data=_encode(rows.ids), chunks=(_chunk_rows(0, n),))
            f.create_dataset("splits", data=split_codes.astype(np.uint32).reshape(-1))
            f.create_dataset("split_names", data=[str(s) for s in split_names],
                             dtype=h5py.string_dtype())
            if rows.sources is not None:
                f.create_dataset("sources", data=_encode(rows.sources),
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
            ids=_decode(pick(self.ids)), features=as_float32(pick(self.features)),
            labels=pick(self.labels), splits=pick(self.splits),
            sources=None if sources is None else _decode(sources),
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
            self._split_names = np.array(
                [s.decode() for s in self._file["split_names"][()]], dtype=object)
        except (OSError, KeyError) as exc:
            raise self._corrupt(f"cannot be read ({exc})") from exc

    def _corrupt(self, problem: str) -> CorruptData:
        return CorruptData(
            f"shard {self.info.name} {problem}: run `tipretrieval info STORE --verify` and "
            "restore the shard from a backup or re-import its rows into a new store"
        )

    def read(self, start: int, stop: int, with_views: bool = False) -> Block:
        """Rows `start:stop` of the shard as a raw Block."""
        f = self._file
        try:
            return Block(
                row_ids=np.arange(start, stop, dtype=np.int64) + self.info.first_row_id,
                ids=f["ids"][start:stop], labels=f["labels"][start:stop],
                splits=self._split_names[f["splits"][start:stop]],
                features=f["features"][start:stop],
                sources=f["sources"][start:stop] if "sources" in f else None,
                views=f["views"][start:stop] if with_views and "views" in f else None,
            )
        except (OSError, KeyError) as exc:
            raise self._corrupt(f"cannot be read ({exc})") from exc

    def read_ids(self, start: int, stop: int) -> np.ndarray:
        """The encoded string ids of rows `start:stop` (bytes; cheap, no features read)."""
        try:
            return self._file["ids"][start:stop]
        except (OSError, KeyError) as exc:
            raise self._corrupt(f"cannot be read ({exc})") from exc

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
