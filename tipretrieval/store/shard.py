"""One immutable HDF5 shard: written once (temp file, fsync, rename), then read in blocks.

Layout (format 2): `features` (N, D) and optional `views` (N, V, D) in the store dtype,
uncompressed and chunked by a few thousand rows; `labels` int64; `splits` as uint32 codes into
the `split_names` list; `ids` and optional `sources` as variable-length UTF-8: all strings
concatenated in `ids_utf8` (uint8) with the end offset of each row in `ids_end` (int64), so one
long id costs its own bytes only. Every dataset carries HDF5's fletcher32 checksum, which HDF5
checks on every chunk it reads: a flipped bit is an error, never a changed value. Newer
shards also hold `features_xxh3`: the xxh3_64 of each `features` chunk as
stored (the last one padded with zeros, as HDF5 stores it). The store's reader reads such
chunks as stored and checks them against it, which costs a fifth of HDF5's fletcher32 pass
(`ShardReader.column_into`); any other HDF5 reader still gets fletcher32. Row ids are
not stored: a shard holds the consecutive ids starting at its `first_row_id` (in the manifest).
`id_hash` holds the sorted 64-bit hashes of the ids (by the store's algorithm, see `id_hash`)
and `id_order` the row of each, so an id lookup reads 16 bytes per stored row instead of every
id.

Format 1 shards (no checksums, ids and sources as fixed-width bytes `ids`/`sources`, maybe no
hash table) are still read.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import xxhash

from ..errors import BadInput, ConcurrentChange, CorruptData
from ..rows import Rows
from ..util.atomic import atomic_path
from ..util.checksum import file_digest
from ..util.file_image import FileImage
from ..util.reserve import release_unused, reserve
from .float16 import INF_BITS, all_finite, as_float32, magnitude_bits
from .id_hash import id_hashes
from .manifest import Manifest, ShardInfo

CHUNK_ROWS = 4096
_CHUNK_BYTES = 4 << 20
# Chunk cache of each open dataset: holds a features chunk that one batch reads in part until
# the next batch reads the rest, so every chunk is read and checksummed once.
CACHE_BYTES = 2 * _CHUNK_BYTES + (1 << 20)
_TEXT_CHUNK = 256 << 10
_ID_BLOCK = 1 << 16
ZERO_STRIDE = 16  # rows apart of the all-zero check: below any features chunk's row count
IMAGE_BYTES = 256 << 20  # the most data of a shard built in a given image (`_write_file`)
RESTORE = "restore it from a backup or re-import its rows into a new store"


def encode(strings: Iterable) -> np.ndarray:
    """Strings as an object array of UTF-8 bytes; BadInput for text that is not Unicode."""
    values = strings.tolist() if isinstance(strings, np.ndarray) else list(strings)
    try:
        out = [s.encode("utf-8") for s in values]  # the usual case: valid str
        return np.array(out + [b""], dtype=object)[:-1]
    except (AttributeError, UnicodeEncodeError):
        pass
    out = []
    for s in values:
        try:
            out.append(str(s).encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise BadInput(f"id or source {str(s)!r} is not valid Unicode ({exc.reason}): "
                           "decode it with the right codec before importing") from exc
    return np.array(out + [b""], dtype=object)[:-1]  # the sentinel keeps a 1-D object array


def same_strings(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two object arrays of str are equal (at C speed: the same str objects compare
    by identity, so sources read from the id column cost one pass over pointers)."""
    return len(a) == len(b) and a.tolist() == b.tolist()


@dataclass(frozen=True)
class IdKeys:
    """String ids as UTF-8 bytes (`encoded`, an object array) with their 64-bit hashes by
    `algorithm` (a store's `Manifest.id_hash`), and as a shard stores them when a reader had
    them so (`text`: then the bytes per id are only made again when asked for, which is rare:
    to confirm a hash match; an import holds a few chunks' ids at a time)."""

    given: np.ndarray | None  # the encoded ids (None: made from `text` when asked for)
    hashes: np.ndarray
    algorithm: str
    text: Text | None = None

    @functools.cached_property
    def encoded(self) -> np.ndarray:
        if self.given is not None:
            return self.given
        values = split_text(self.text.data, self.text.ends, 0)
        return np.array(values + [b""], dtype=object)[:-1]  # (the sentinel keeps it 1-D)

    @classmethod
    def of(cls, ids: Iterable, algorithm: str) -> IdKeys:
        encoded = encode(ids)
        return cls(encoded, id_hashes(encoded, algorithm), algorithm)

    @functools.cached_property
    def order(self) -> np.ndarray:
        """The positions of the ids sorted by hash (stable: equal hashes in id order)."""
        return np.argsort(self.hashes, kind="stable")

    def take(self, index) -> IdKeys:
        return IdKeys(self.encoded[index], self.hashes[index], self.algorithm)

    def packed(self) -> Text:
        """The ids as a shard stores them (`Text`)."""
        return self.text if self.text is not None else Text.of(self.encoded)

    def among(self, other: IdKeys) -> np.ndarray:
        """A bool per id: whether `other` holds it (hashes first, equal hashes confirmed)."""
        theirs = other.hashes[other.order]
        found = theirs[np.minimum(np.searchsorted(theirs, self.hashes), len(theirs) - 1)] \
            == self.hashes if len(theirs) else np.zeros(len(self), bool)
        if found.any():
            theirs = set(other.encoded[np.isin(other.hashes, self.hashes[found])].tolist())
            found[found] = [e in theirs for e in self.encoded[found].tolist()]
        return found

    def __len__(self) -> int:
        return len(self.hashes)


def _chunk_rows(row_bytes: int, n: int) -> int:
    return max(1, min(n, CHUNK_ROWS, _CHUNK_BYTES // max(row_bytes, 1)))


def _split_codes(splits: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The sorted split names and each row's index into them (uint32)."""
    values = [str(s) for s in set(splits.tolist())]
    names = sorted(values)
    if len(names) == 1:
        return names, np.zeros(len(splits), np.uint32)
    index = {n: i for i, n in enumerate(names)}
    return names, np.fromiter(map(index.__getitem__, map(str, splits.tolist())), np.uint32,
                              len(splits))


def _counts(labels: np.ndarray, names: list[str], codes: np.ndarray
            ) -> dict[str, dict[int, int]]:
    """Rows per split name and label."""
    if not len(codes):
        return {}
    labels = labels.astype(np.int64)
    low = int(labels.min())
    span = int(labels.max()) - low + 1
    pairs, counts = np.unique(codes.astype(np.int64) * span + (labels - low), return_counts=True)
    out: dict[str, dict[int, int]] = {}
    for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
        out.setdefault(names[pair // span], {})[pair % span + low] = int(count)
    return out


@dataclass(frozen=True)
class _Column:
    """One dataset of a shard: its data and chunk shape (None: empty, so not chunked)."""

    name: str
    data: np.ndarray
    chunks: tuple[int, ...] | None
    dtype: object = None  # (h5py's string dtype for the split names)


def _column(name: str, data: np.ndarray, row_bytes: int) -> _Column:
    chunks = (_chunk_rows(row_bytes, len(data)), *data.shape[1:]) if len(data) else None
    return _Column(name, data, chunks)


def chunk_hashes(column: _Column) -> np.ndarray:
    """The xxh3_64 of each chunk of a 2-D `column` as HDF5 stores it (the last chunk's missing
    rows are zeros), as uint64."""
    data = np.ascontiguousarray(column.data)
    if column.chunks is None:
        return np.empty(0, np.uint64)
    rows = column.chunks[0]
    hashes = np.empty(-(-len(data) // rows), np.uint64)
    for c in range(len(hashes)):
        block = data[c * rows:(c + 1) * rows]
        if len(block) < rows:
            block = np.concatenate([block, np.zeros((rows - len(block), *data.shape[1:]),
                                                    data.dtype)])
        hashes[c] = xxhash.xxh3_64_intdigest(block)
    return hashes


@dataclass(frozen=True)
class Text:
    """Strings as a shard stores them: their UTF-8 bytes end to end and the end offset of each
    (so they also travel to a writer process at the speed of a copy)."""

    data: bytes
    ends: np.ndarray  # int64

    @classmethod
    def of(cls, encoded: np.ndarray) -> Text:
        """`encoded` (UTF-8 bytes per row, as `IdKeys.encoded`) end to end."""
        values = encoded.tolist()
        return cls(b"".join(values),
                   np.cumsum(np.fromiter(map(len, values), np.int64, len(values))))

    def columns(self, name: str) -> list[_Column]:
        """The `{name}_utf8` bytes and `{name}_end` offsets datasets."""
        data = np.frombuffer(self.data, dtype=np.uint8)
        return [_Column(f"{name}_utf8", data, (max(1, min(len(data), _TEXT_CHUNK)),) if len(data)
                        else None), _column(f"{name}_end", self.ends, 8)]


@dataclass(frozen=True)
class ShardData:
    """What a new shard holds, ready to write: features (and views) in the store's dtype, the
    split names and each row's code, ids and sources as `Text`, the ids' hashes and their
    stable sort order."""

    features: np.ndarray | None  # (n, D); None only while it travels apart (`shard_writer`)
    labels: np.ndarray
    split_names: list[str]  # sorted
    split_codes: np.ndarray  # uint32, each row's index into `split_names`
    ids: Text
    hashes: np.ndarray
    order: np.ndarray  # `IdKeys.order`
    sources: Text | None
    views: np.ndarray | None

    @classmethod
    def of(cls, rows: Rows, keys: IdKeys, dtype: str) -> ShardData:
        """`rows` (whose ids are `keys`) as a shard of dtype `dtype` stores them."""
        ids = keys.packed()
        sources = None if rows.sources is None else ids if same_strings(rows.sources, rows.ids) \
            else Text.of(encode(rows.sources))  # (image paths as ids): encoded once
        return cls(rows.features.astype(dtype, copy=False), rows.labels,
                   *_split_codes(rows.splits), ids, keys.hashes, keys.order, sources,
                   None if rows.views is None else rows.views.astype(dtype))


def _fill(f: h5py.File, columns: list[_Column]) -> None:
    """Write the datasets, each chunked with HDF5's fletcher32 checksum on every chunk."""
    for c in columns:
        f.create_dataset(c.name, data=c.data, chunks=c.chunks, fletcher32=c.chunks is not None,
                         dtype=c.dtype)


def _write_file(tmp: Path, columns: list[_Column], image: FileImage | None) -> str:
    """Write the shard file at `tmp` and return its digest. Given a `FileImage` (the import's
    writer process reuses one) and up to IMAGE_BYTES of data, HDF5 builds the file in it, and
    it is hashed in memory and saved around the page cache. Otherwise HDF5 writes it into disk
    blocks reserved first for more than it can take (data, a 4-byte checksum per chunk, a
    generous allowance for HDF5's metadata), so that a full disk is an OSError at the
    reservation, not a failure inside HDF5 (which crashed the process), and it is hashed from
    the page cache; where blocks cannot be reserved it is built in a new image. (A new image
    per shard made in-process appends slower: its memory is faulted in every time.)"""
    data = sum(c.data.nbytes for c in columns)
    if image is None or data > IMAGE_BYTES:
        with h5py.File(tmp, "w") as f:
            direct = reserve(tmp, data + data // 16 + (1 << 20))
            if direct:
                _fill(f, columns)
        if direct:
            release_unused(tmp)
            return file_digest(tmp)
    own = image is None
    image = FileImage(data + (1 << 20)) if own else image
    try:
        image.reset()
        with h5py.File(image, "w") as f:
            _fill(f, columns)
        image.save(tmp)
        return image.digest()
    finally:
        if own:
            image.close()


def write_shard(path: Path, rows: Rows, first_row_id: int, dtype: str, keys: IdKeys) -> ShardInfo:
    """Write `rows` (whose ids are `keys`) as a new shard at `path` (`write_data`)."""
    return write_data(path, ShardData.of(rows, keys, dtype), first_row_id)


def write_data(path: Path, shard: ShardData, first_row_id: int,
               image: FileImage | None = None) -> ShardInfo:
    """Write `shard` as a new shard file at `path` and describe it: a temp file
    (`_write_file`, building it in `image` when given), fsynced, then renamed into place."""
    n, dim = shard.features.shape
    split_names, split_codes = shard.split_names, shard.split_codes
    itemsize = shard.features.dtype.itemsize
    features = _column("features", shard.features, dim * itemsize)
    columns = [
        features,
        _column("features_xxh3", chunk_hashes(features), 8),
        _column("labels", shard.labels.astype(np.int64), 8),
        *shard.ids.columns("ids"),
        _column("id_hash", shard.hashes[shard.order], 8),
        _column("id_order", shard.order.astype(np.int64), 8),
        _column("splits", split_codes.astype(np.uint32).reshape(-1), 4),
        _Column("split_names", np.array([str(s) for s in split_names] + [""], dtype=object)[:-1],
                None, h5py.string_dtype()),
    ]
    if shard.sources is not None:
        columns += shard.sources.columns("sources")
    if shard.views is not None:
        v = shard.views.shape[1]
        columns.append(_column("views", shard.views, v * dim * itemsize))
    with atomic_path(path) as tmp:
        checksum = _write_file(tmp, columns, image)
        nbytes = tmp.stat().st_size
    return ShardInfo(
        name=path.name, rows=n, first_row_id=first_row_id,
        digest=checksum, nbytes=nbytes,
        views=0 if shard.views is None else int(shard.views.shape[1]),
        has_sources=shard.sources is not None,
        counts=_counts(shard.labels, split_names, split_codes),
    )


def split_text(data: bytes, ends: np.ndarray, base: int) -> list[bytes]:
    """The strings of `data` (UTF-8 bytes end to end) that end at `ends` (offsets from `base`)."""
    bounds = np.concatenate(([0], ends - base)).tolist()
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def decode(raw: list[bytes]) -> np.ndarray:
    """UTF-8 bytes per row back to an object array of str."""
    return np.array([b.decode("utf-8") for b in raw] + [""], dtype=object)[:-1]


@dataclass
class Block:
    """Consecutive rows of one shard as stored (features in the on-disk dtype)."""

    row_ids: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    features: np.ndarray
    sources: np.ndarray | None
    views: np.ndarray | None

    def to_rows(self, mask: np.ndarray | None = None) -> Rows:
        """The (masked) rows as `Rows`, features and views as float32."""
        def pick(a):
            return a if a is None or mask is None else a[mask]
        views = pick(self.views)
        return Rows(
            ids=pick(self.ids), features=as_float32(pick(self.features)),
            labels=pick(self.labels), splits=pick(self.splits), sources=pick(self.sources),
            views=None if views is None else as_float32(views), row_ids=pick(self.row_ids),
        )


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())


class ShardReader:
    """An open shard; every failure is reported as CorruptData naming the shard.

    Opening checks the datasets' shapes against the manifest (`info`, and `dim` when given).
    """

    def __init__(self, shard_dir: Path, info: ShardInfo, dim: int | None = None):
        self.info = info
        self.path = shard_dir / info.name
        check_present(self.path, info)
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=CACHE_BYTES, rdcc_w0=1.0)
        except OSError as exc:
            raise self._corrupt(f"cannot be read ({_one_line(exc)})") from exc
        self._datasets: dict[str, h5py.Dataset] = {}
        self._last: tuple[int, np.ndarray] | None = None  # the last features chunk read
        try:
            with self._reading() as f:
                self._split_names = np.array(
                    [s.decode() for s in f["split_names"][()]], dtype=object)
                self._text = "ids_end" in f  # format 2: variable-length UTF-8 strings
                self._check_shapes(f, dim)
        except CorruptData:
            self._file.close()
            raise

    def _corrupt(self, problem: str) -> CorruptData:
        return CorruptData(f"shard {self.info.name} {problem}",
                           f"check every shard with `Store.verify()` and {RESTORE}")

    def _check_shapes(self, f: h5py.File, dim: int | None) -> None:
        n = self.info.rows
        want = {"features": (n, dim), "labels": (n,), "splits": (n,),
                "ids_end" if self._text else "ids": (n,)}
        if self.info.views:
            want["views"] = (n, self.info.views, dim)
        if self.info.has_sources:
            want["sources_end" if self._text else "sources"] = (n,)
        for name, shape in want.items():
            got = f[name].shape
            if len(got) != len(shape) or any(w is not None and g != w
                                              for g, w in zip(got, shape, strict=True)):
                raise self._corrupt(f"has {name} of shape {got} but the manifest says "
                                    f"{tuple('D' if w is None else w for w in shape)}")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[h5py.File]:
        try:
            yield self._file
        except (OSError, KeyError, ValueError, TypeError) as exc:
            text = _one_line(exc)
            if "filter returned failure" in text:  # how HDF5 reports a fletcher32 mismatch
                text = "a chunk fails its fletcher32 checksum: the data is damaged"
            raise self._corrupt(f"cannot be read ({text})") from exc

    def _dataset(self, name: str) -> h5py.Dataset:
        """Dataset `name`, kept open so that its chunk cache lasts from one read to the next."""
        ds = self._datasets.get(name)
        if ds is None:
            ds = self._datasets[name] = self._file[name]
        return ds

    @property
    def split_names(self) -> np.ndarray:
        """The shard's split names (object array of str) indexed by the `splits` codes."""
        return self._split_names

    def read(self, start: int, stop: int, with_views: bool = False) -> Block:
        """Rows `start:stop` of the shard as a Block (ids and sources decoded)."""
        return Block(
            row_ids=np.arange(start, stop, dtype=np.int64) + self.info.first_row_id,
            ids=self.strings("ids", start, stop), labels=self.column("labels", start, stop),
            splits=self.splits(start, stop), features=self.column("features", start, stop),
            sources=self.strings("sources", start, stop) if self.info.has_sources else None,
            views=self.column("views", start, stop) if with_views and self.info.views else None,
        )

    def splits(self, start: int, stop: int) -> np.ndarray:
        """The split names of rows `start:stop`; CorruptData for a code without a name."""
        codes = self.column("splits", start, stop)
        if len(codes) and int(codes.max()) >= len(self._split_names):
            raise self._corrupt("has split codes without a name")
        return self._split_names[codes]

    def column(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` of dataset `name` as stored."""
        with self._reading():
            return self._dataset(name)[start:stop]

    def column_into(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Rows `start:stop` of dataset `name` straight into `out` (its stored dtype). The
        features of a shard with chunk hashes are read chunk by chunk as stored and checked
        against them (`_features_into`), the rest by HDF5 (fletcher32)."""
        with self._reading():
            if name == "features" and self._hashes is not None and stop > start:
                self._features_into(start, stop, out)
            else:
                self._dataset(name).read_direct(out, np.s_[start:stop])

    @functools.cached_property
    def _hashes(self) -> np.ndarray | None:
        """The features' chunk hashes (None: a shard written before them)."""
        with self._reading() as f:
            if "features_xxh3" not in f:
                return None
            ds = self._dataset("features")
            hashes = f["features_xxh3"][()]
            if ds.chunks is None or len(hashes) != -(-ds.shape[0] // ds.chunks[0]):
                raise self._corrupt(f"has {len(hashes)} features chunk hashes for "
                                    f"{ds.shape[0]} rows in chunks of {ds.chunks}")
            return hashes

    def _features_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows `start:stop` of the features into `out` from the chunks holding them."""
        rows = self._dataset("features").chunks[0]
        for c in range(start // rows, (stop - 1) // rows + 1):
            chunk = self._chunk(c)
            a, b = max(start, c * rows), min(stop, (c + 1) * rows)
            out[a - start:b - start] = chunk[a - c * rows:b - c * rows]

    def _chunk(self, c: int) -> np.ndarray:
        """Features chunk `c` as stored, checked against its xxh3_64 (HDF5's fletcher32 is
        not computed); the last chunk read is kept, for a batch that reads the rest of it."""
        if self._last is not None and self._last[0] == c:
            return self._last[1]
        ds = self._dataset("features")
        shape = ds.chunks
        size = int(np.prod(shape)) * ds.dtype.itemsize
        buf = np.empty(size + 4, np.uint8)  # (+ fletcher32's 4 bytes)
        mask, data = ds.id.read_direct_chunk((c * shape[0], 0), out=buf)
        if mask or len(data) != size + 4:
            raise self._corrupt(f"has a features chunk not stored as written (chunk {c})")
        if xxhash.xxh3_64_intdigest(buf[:size]) != int(self._hashes[c]):
            raise self._corrupt("cannot be read (a features chunk fails its xxh3_64 checksum: "
                                "the data is damaged)")
        chunk = buf[:size].view(ds.dtype).reshape(shape)
        self._last = c, chunk
        return chunk

    def raw_strings(self, name: str, start: int, stop: int) -> list[bytes]:
        """The UTF-8 bytes of string column `name` (ids, sources) for rows `start:stop`."""
        stop = min(stop, self.info.rows)
        if stop <= start:
            return []
        with self._reading():
            if not self._text:
                return [bytes(b) for b in self._dataset(name)[start:stop].tolist()]
            ends = self._dataset(f"{name}_end")[max(start - 1, 0):stop]
            base = int(ends[0]) if start else 0
            ends = ends[1:] if start else ends
            if np.any(np.diff(ends) <= 0) or ends[0] <= base:  # every string is non-empty
                raise self._corrupt(f"has damaged {name} offsets")
            data = self._dataset(f"{name}_utf8")[base:int(ends[-1])].tobytes()
            if len(data) != int(ends[-1]) - base or b"\0" in data:
                raise self._corrupt(f"has damaged {name} text")
        return split_text(data, ends, base)

    def strings(self, name: str, start: int, stop: int) -> np.ndarray:
        """String column `name` (ids, sources) of rows `start:stop` as an object array of str."""
        try:
            return decode(self.raw_strings(name, start, stop))
        except UnicodeDecodeError as exc:
            raise self._corrupt(f"has {name} that are not UTF-8 ({exc.reason})") from exc

    def check_features(self, start: int, features: np.ndarray, nonzero: bool,
                       keep: np.ndarray | None = None) -> None:
        """CorruptData unless `features` (or views, as stored) are finite and, when `nonzero`
        (normalised stores), not all zero: damage HDF5's checksums miss (a bad writer; a zeroed
        chunk, which passes fletcher32 and is caught by sampling every ZERO_STRIDE-th row) or
        that a format 1 shard has no checksum for. The rows are the local rows from `start`
        (those where `keep`, when given)."""
        if not len(features):
            return
        sample = features[::ZERO_STRIDE if keep is None else 1]  # masked reads: every row
        zero = nonzero and magnitude_bits(sample).max(axis=-1).min() == 0
        if all_finite(features) and not zero:
            return  # the usual case
        inf = INF_BITS[features.dtype.itemsize]
        bits = magnitude_bits(features)
        rows = (bits >= inf).reshape(len(bits), -1).any(axis=1)
        what = "NaN or inf features"
        if not rows.any():
            rows = (bits.max(axis=-1) == 0).reshape(len(bits), -1).any(axis=1)
            what = "all-zero feature vectors"
        row = int(np.flatnonzero(rows)[0])
        local = start + (row if keep is None else int(np.flatnonzero(keep)[row]))
        raise self._corrupt(f"holds {what} (row id {self.info.first_row_id + local})")

    def check_labels(self, labels: np.ndarray, n_classes: int) -> None:
        """CorruptData unless `labels` lie in -1..n_classes-1."""
        if len(labels) and (labels.min() < -1 or labels.max() >= n_classes):
            raise self._corrupt(f"holds labels outside -1..{n_classes - 1}")

    def locate(self, keys: IdKeys) -> np.ndarray:
        """The local row of every id, -1 where the shard does not hold it."""
        encoded = keys.encoded
        with self._reading() as f:
            if "id_hash" not in f:
                if "ids_end" in f:  # format 2 always writes the table: its absence is damage
                    raise self._corrupt("has lost its id hash table")
                return self._scan_ids(encoded)  # format 1 shards from before the table
            rows = np.full(len(encoded), -1, dtype=np.int64)
            stored = f["id_hash"][()]
            self._check_hash_table(f, stored, keys.algorithm)
            lo = np.searchsorted(stored, keys.hashes, "left")
            hits = np.searchsorted(stored, keys.hashes, "right") - lo
            if not hits.any():
                return rows
            query = np.repeat(np.arange(len(encoded)), hits)
            pos = np.arange(len(query)) - np.repeat(np.cumsum(hits) - hits, hits) + \
                np.repeat(lo, hits)
            candidates = f["id_order"][()][pos]
            if len(candidates) and (candidates.min() < 0 or candidates.max() >= self.info.rows):
                raise self._corrupt("has a damaged id hash table")
            same = self.ids_at(candidates) == encoded[query]  # confirm hash matches exactly
            rows[query[same]] = candidates[same]
            return rows

    def _check_hash_table(self, f: h5py.File, stored: np.ndarray, algorithm: str) -> None:
        """CorruptData unless the hash table is sorted and its equal neighbours (a zeroed
        chunk, which passes fletcher32; or a rare true collision) are the hashes of their ids."""
        if len(stored) != self.info.rows or np.any(stored[1:] < stored[:-1]):
            raise self._corrupt("has a damaged id hash table")
        same = np.flatnonzero(stored[1:] == stored[:-1])
        if len(same):
            at = np.union1d(same, same + 1)
            rows = f["id_order"][()][at]
            if rows.min() < 0 or rows.max() >= self.info.rows or \
                    not np.array_equal(id_hashes(self.ids_at(rows), algorithm), stored[at]):
                raise self._corrupt("has a damaged id hash table")

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        """The encoded ids of the given rows, reading only the id blocks that hold them."""
        out = np.empty(len(rows), dtype=object)
        blocks = rows // _ID_BLOCK
        for b in np.unique(blocks):
            start = int(b) * _ID_BLOCK
            at = blocks == b
            block = self.raw_strings("ids", start, start + _ID_BLOCK)
            out[at] = [block[r] for r in (rows[at] - start).tolist()]
        return out

    def _scan_ids(self, encoded: np.ndarray) -> np.ndarray:
        """`locate` for shards written without an id hash table: read every id once."""
        wanted: dict[bytes, list[int]] = {}
        for i, b in enumerate(encoded.tolist()):
            wanted.setdefault(b, []).append(i)
        rows = np.full(len(encoded), -1, dtype=np.int64)
        for start in range(0, self.info.rows, _ID_BLOCK):
            for j, b in enumerate(self.raw_strings("ids", start, start + _ID_BLOCK)):
                for i in wanted.get(b, ()):
                    rows[i] = start + j
        return rows

    def close(self) -> None:
        self._datasets.clear()
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _removed_since(path: Path, name: str) -> bool:
    """Whether the store's current manifest no longer names shard `name` (compacted away)."""
    try:
        return all(s.name != name for s in Manifest.load(path.parent.parent).shards)
    except (BadInput, OSError):
        return False


def check_present(path: Path, info: ShardInfo) -> None:
    """Raise CorruptData when a shard file is missing or has the wrong size (ConcurrentChange
    when a compaction removed it after this snapshot was opened)."""
    if not path.is_file():
        if _removed_since(path, info.name):
            raise ConcurrentChange(
                f"shard {info.name} was replaced by `tipretrieval compact` after this reader "
                "opened the store", "rerun the command to read the store as it is now")
        raise CorruptData(f"shard {info.name} is missing from {path.parent}: {RESTORE}")
    size = path.stat().st_size
    if size != info.nbytes:
        raise CorruptData(
            f"shard {info.name} is truncated or changed ({size} bytes, expected {info.nbytes}): "
            f"{RESTORE}"
        )


def verify_shard(shard_dir: Path, info: ShardInfo) -> None:
    """Raise CorruptData when a shard is missing, truncated or fails its checksum."""
    path = shard_dir / info.name
    check_present(path, info)
    if file_digest(path, info.algorithm) != info.digest:
        raise CorruptData(f"shard {info.name} fails its {info.algorithm} checksum (corrupt): "
                          f"{RESTORE}")
