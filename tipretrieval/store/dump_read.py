"""Reading embedding dumps in bounded chunks: .npy, .npz, .parquet and clip-retrieval pairs.

A dump is a folder, a glob or one file. A folder with `img_emb/` and `metadata/` is the
clip-retrieval layout: `img_emb/img_emb_N.npy` paired with `metadata/metadata_N.parquet` by N
(row i of one is row i of the other). Otherwise every .npy/.npz/.parquet file matched is a part,
in natural name order. Features are read `rows` at a time: .npy by file reads past the page
cache (`Direct`; plain reads where the file system refuses them) into a buffer the caller
reuses, when it gives one (reading into fresh memory faults in every page and was up to 5x
slower), .npz by streaming the member's bytes out of the zip (stored or deflated),
parquet by record batches (fixed-size or variable list column). String columns are converted to
str by arrow in one pass (`to_numpy`, not `to_pylist`, which was 10x slower), and a string id
column is also handed over as its UTF-8 bytes, per row and end to end as a shard stores them
(`shard.Text`, from arrow's buffers), so the ids are not encoded or joined again. Other .npz
arrays (ids, labels, sources) are small and read whole. Only pyarrow and numpy are used:
embedding-reader 1.8.1 pins pandas<3 (installing it would downgrade this environment's pandas
3.1) and adds a thread pool and fsspec layer that a local, sequential, bounded-memory reader
does not need.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import mmap
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import BadInput
from .shard import Text

DUMP_SUFFIXES = (".npy", ".npz", ".parquet")
# What reading a damaged file raises (numpy parses a .npy header with Python's tokenizer and
# `ast`: SyntaxError, TokenError); reported as BadInput naming the file.
UNREADABLE = (OSError, ValueError, EOFError, SyntaxError, TokenError, zipfile.BadZipFile,
              pa.ArrowException)
Into = Callable[[int, int, np.dtype], np.ndarray]  # (rows, dim, dtype) -> an array to read into


@dataclass(frozen=True)
class Columns:
    """Where the fields are: npz array / parquet column names (None: absent)."""

    features: str = "embedding"  # parquet column; .npz: this array, else "features"
    ids: str | None = None
    labels: str | None = None
    sources: str | None = None


@dataclass(frozen=True)
class DumpPart:
    """One unit of resumption: a features file and, in the clip-retrieval layout, its metadata."""

    features: Path
    metadata: Path | None = None

    @property
    def name(self) -> str:
        return self.features.name


@dataclass(frozen=True)
class Names:
    """Class names of rows, dictionary-encoded: row i has `names[codes[i]]`, none when -1."""

    codes: np.ndarray
    names: list[str]


@dataclass
class Chunk:
    """Up to `rows` consecutive rows of a part, starting at row `start` of the part."""

    start: int
    features: np.ndarray            # (n, D) as stored in the dump
    ids: np.ndarray | list[str] | None = None
    labels: np.ndarray | Names | None = None  # class indices or names
    sources: np.ndarray | list[str] | None = None
    id_bytes: np.ndarray | None = None  # the ids as UTF-8 bytes (object array), when read so
    id_text: Text | None = None  # and as a shard stores them


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def is_dump(source: str | Path) -> bool:
    """True for a folder, a glob pattern or a .parquet file (what `import_dump` reads)."""
    text = str(source)
    return (Path(text).is_dir() or glob.has_magic(text)
            or Path(text).suffix.lower() == ".parquet")


def find_parts(source: str | Path) -> list[DumpPart]:
    """The parts of a dump, in order; BadInput when there are none or a pair is missing."""
    root = Path(source)
    if (root / "img_emb").is_dir() and (root / "metadata").is_dir():
        parts = []
        for emb in sorted((root / "img_emb").glob("img_emb_*.npy"), key=_natural):
            n = emb.stem.removeprefix("img_emb_")
            meta = root / "metadata" / f"metadata_{n}.parquet"
            if not meta.is_file():
                raise BadInput(f"{emb} has no metadata file {meta}: restore it or remove the "
                               "embeddings file")
            parts.append(DumpPart(emb, meta))
    else:
        files = sorted(root.iterdir()) if root.is_dir() else [Path(p) for p in
                                                              glob.glob(str(source))]
        parts = [DumpPart(p) for p in sorted(files, key=_natural)
                 if p.is_file() and p.suffix.lower() in DUMP_SUFFIXES]
    if not parts:
        raise BadInput(f"{source} holds no {', '.join(DUMP_SUFFIXES)} files: give a folder, "
                       "a glob such as 'emb/*.npy' or a clip-retrieval output folder")
    return parts


def part_rows(part: DumpPart, columns: Columns) -> int:
    """Rows in a part, from file headers only."""
    suffix = part.features.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.ParquetFile(part.features).metadata.num_rows
        if suffix == ".npy":
            return int(np.load(part.features, mmap_mode="r").shape[0])
        with zipfile.ZipFile(part.features) as z, z.open(_npz_member(z, columns, part)) as f:
            return int(_npy_header(f, part)[0][0])
    except UNREADABLE as err:
        raise _unreadable(part, err) from err


def _unreadable(part: DumpPart, err: BaseException) -> BadInput:
    return BadInput(f"cannot read {part.features} ({' '.join(str(err).split())}): check that "
                    f"it is a valid {part.features.suffix} file")


def read_chunks(part: DumpPart, columns: Columns, rows: int, start: int = 0,
                into: Into | None = None) -> Iterator[Chunk]:
    """Chunks of at most `rows` rows of `part` from row `start` on (bounded memory). `into`
    gives the array each chunk of a .npy file is read into (a C-contiguous (rows, dim) array
    of the file's dtype, which the chunk then is); None: a new array per chunk."""
    try:
        suffix = part.features.suffix.lower()
        if suffix == ".parquet":
            yield from _parquet_chunks(part.features, columns, rows, start)
            return
        feats = _npy_chunks(part, rows, start, into) if suffix == ".npy" else _npz_chunks(
            part, columns, rows, start)
        if part.metadata is None:
            yield from feats
            return
        meta = _parquet_chunks(part.metadata, columns, rows, start, features=False)
        for chunk in feats:
            info = next(meta, None)
            if info is None or len(info.features) != len(chunk.features):
                raise BadInput(f"{part.metadata} has fewer rows than {part.features}: they "
                               "must pair row for row")
            chunk.ids, chunk.labels, chunk.sources = info.ids, info.labels, info.sources
            chunk.id_bytes, chunk.id_text = info.id_bytes, info.id_text
            yield chunk
        if next(meta, None) is not None:
            raise BadInput(f"{part.metadata} has more rows than {part.features}: they must "
                           "pair row for row")
    except UNREADABLE as err:
        raise _unreadable(part, err) from err


def _npy_chunks(part: DumpPart, rows: int, start: int, into: Into | None) -> Iterator[Chunk]:
    """Chunks read with file reads past the page cache where the file system allows (`Direct`),
    else plain ones (a memory map's touched pages would count towards the process's resident
    memory, up to the whole file), into `into`'s arrays when given."""
    arr = np.load(part.features, mmap_mode="r")
    _check_matrix(arr.shape, arr.dtype, part)
    (n, d), dtype, offset = arr.shape, arr.dtype, arr.offset
    if not arr.flags.c_contiguous:  # Fortran order: rows are not contiguous in the file
        for a in range(start, n, rows):
            yield Chunk(a, np.ascontiguousarray(arr[a:a + rows]))
        return
    del arr
    with open(part.features, "rb") as f, Direct.of(part.features) as direct:
        for a in range(start, n, rows):
            b = min(a + rows, n)
            data = np.empty((b - a, d), dtype) if into is None else into(b - a, d, dtype)
            out, at = memoryview(data).cast("B"), offset + a * d * dtype.itemsize
            if direct is None or not direct.read(at, out):
                f.seek(at)
                got = f.readinto(out)
                if got != data.nbytes:  # (reported as a file that is not valid)
                    raise ValueError(f"the file ends {data.nbytes - got} bytes short")
            yield Chunk(a, data)


class Direct:
    """Reads of a file that bypass the page cache (O_DIRECT): the disk writes into an aligned
    buffer of PIECE bytes, copied out from there. A plain read() of a cold dump cost the
    kernel 0.4-1.4 s of CPU time per GB (filling the page cache, more when it must evict for
    it), against 0.05 s read this way; nor does an import push the rest out of the cache."""

    BLOCK = 4096  # the alignment O_DIRECT needs of offsets, lengths and the buffer
    PIECE = 8 << 20

    def __init__(self, fd: int):
        self._fd = fd
        self._buffer = mmap.mmap(-1, self.PIECE + self.BLOCK)  # (page-aligned)
        self._view = memoryview(self._buffer)

    @classmethod
    @contextlib.contextmanager
    def of(cls, path: Path) -> Iterator[Direct | None]:
        """A reader of `path`, or None where the OS or file system has no O_DIRECT."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except (AttributeError, OSError):
            yield None
            return
        reader = cls(fd)
        try:
            yield reader
        finally:
            reader._view.release()
            reader._buffer.close()
            os.close(fd)

    def read(self, at: int, out: memoryview) -> bool:
        """Fill `out` with the file's bytes from offset `at`; False when the file system
        refused (the caller reads them plainly). ValueError: the file ends short."""
        pos = 0
        while pos < len(out):
            start = (at + pos) // self.BLOCK * self.BLOCK
            skip = at + pos - start
            want = min(self.PIECE, -(-(skip + len(out) - pos) // self.BLOCK) * self.BLOCK)
            try:
                got = os.preadv(self._fd, [self._view[:want]], start)
            except OSError as exc:
                if exc.errno == errno.EINVAL and pos == 0:
                    return False
                raise
            take = min(got - skip, len(out) - pos)
            if take <= 0:
                raise ValueError(f"the file ends {len(out) - pos} bytes short")
            out[pos:pos + take] = self._view[skip:skip + take]
            pos += take
        return True


def _npz_member(z: zipfile.ZipFile, columns: Columns, part: DumpPart) -> str:
    names = [n.removesuffix(".npy") for n in z.namelist()]
    for want in (columns.features, "features"):
        if want in names:
            return f"{want}.npy"
    raise BadInput(f"{part.features} has no {columns.features!r} or 'features' array (it has "
                   f"{sorted(names)})", "name it with `columns.features=`")


def _npy_header(f, part: DumpPart) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read(f)
    if fortran:
        raise BadInput(f"{part.features} stores features in Fortran order: save them C-ordered")
    _check_matrix(shape, dtype, part)
    return shape, dtype


def _npz_chunks(part: DumpPart, columns: Columns, rows: int, start: int) -> Iterator[Chunk]:
    with zipfile.ZipFile(part.features) as z:
        extra = {}
        with np.load(part.features, allow_pickle=False) as whole:
            for field in ("ids", "labels", "sources"):
                key = getattr(columns, field) or field
                if key in whole.files:
                    extra[field] = whole[key]
        with z.open(_npz_member(z, columns, part)) as f:
            (n, d), dtype = _npy_header(f, part)
            width = d * dtype.itemsize
            f.read(start * width)  # zip members are read forward only
            for a in range(start, n, rows):
                b = min(a + rows, n)
                data = f.read((b - a) * width)
                if len(data) != (b - a) * width:
                    raise BadInput(f"{part.features} is truncated: re-export it")
                yield Chunk(a, np.frombuffer(data, dtype=dtype).reshape(b - a, d),
                            *_fields(extra, a, b))


def _fields(extra: dict, a: int, b: int) -> tuple:
    ids = extra.get("ids")
    labels = extra.get("labels")
    sources = extra.get("sources")
    return (None if ids is None else [str(v) for v in ids[a:b]],
            None if labels is None else np.asarray(labels[a:b]),
            None if sources is None else [str(v) for v in sources[a:b]])


def _check_matrix(shape: tuple, dtype: np.dtype, part: DumpPart) -> None:
    if len(shape) != 2 or np.dtype(dtype).kind != "f":
        raise BadInput(f"{part.features} holds a {np.dtype(dtype)} array of shape {shape}: "
                       "give 2-D floating-point embeddings (rows x dim)")


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last may be shorter) from record batches."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        pending.append(batch)
        have += batch.num_rows
        while have >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, have = rest.to_batches(), rest.num_rows
    if have:
        yield pa.Table.from_batches(pending)


def _parquet_chunks(path: Path, columns: Columns, rows: int, start: int,
                    features: bool = True) -> Iterator[Chunk]:
    file = pq.ParquetFile(path)
    have = set(file.schema_arrow.names)
    wanted = {f: getattr(columns, f) for f in ("ids", "labels", "sources")}
    if features:
        wanted["features"] = columns.features
    missing = sorted(c for c in wanted.values() if c is not None and c not in have)
    if missing:
        raise BadInput(f"{path} has no column {missing[0]!r} (it has {sorted(have)})",
                       "name the right one with `columns.features=`, `columns.ids=`, "
                       "`columns.labels=` or `columns.sources=`")
    names = [c for c in wanted.values() if c is not None]
    at = 0
    for table in _rebatch(file.iter_batches(batch_size=min(rows, 65_536), columns=names),
                          rows):
        a, at = at, at + table.num_rows
        if at <= start:
            continue
        table = table.slice(max(0, start - a))
        a = max(a, start)
        ids = id_bytes = id_text = None
        if columns.ids is not None:
            ids, id_bytes, id_text = _texts(table[columns.ids], None, with_bytes=True)
        if columns.sources is None:
            sources = None
        elif columns.sources == columns.ids and not table[columns.ids].null_count:
            sources = ids  # one column for both (image paths): read once, the same strings
        else:
            sources = _texts(table[columns.sources], "")[0]
        yield Chunk(
            a, _embeddings(table[columns.features], path) if features
            else np.empty((table.num_rows, 0)),
            ids=ids, sources=sources, id_bytes=id_bytes, id_text=id_text,
            labels=None if columns.labels is None else _labels(table[columns.labels]),
        )


def _labels(column: pa.ChunkedArray) -> np.ndarray | Names:
    """A label column: string (or dictionary of string) columns as `Names` (nulls: -1),
    others as an array of their values."""
    if pa.types.is_dictionary(column.type) and pa.types.is_string(column.type.value_type):
        column = column.cast(pa.string())
    if not pa.types.is_string(column.type):
        return np.asarray(column.to_pylist())
    encoded = pc.dictionary_encode(column.combine_chunks())
    return Names(pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False),
                 encoded.dictionary.to_pylist())


def _texts(column: pa.ChunkedArray, null: str | None, with_bytes: bool = False
           ) -> tuple[np.ndarray | list, np.ndarray | None, Text | None]:
    """A column as str (an object array) and, `with_bytes` for a string column, their UTF-8
    bytes both per row and end to end (`Text`, from arrow's buffers; else None, None): string
    columns as they are (nulls become `null`, or "None" when `null` is None, as str(None)),
    other types as a list through str()."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = pc.fill_null(column, "None" if null is None else null)
        if not with_bytes:
            return text.to_numpy(zero_copy_only=False), None, None
        binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
        encoded = text.cast(binary).combine_chunks()
        _, offsets, data = encoded.buffers()
        ends = np.frombuffer(offsets, np.int64 if pa.types.is_large_binary(binary) else np.int32)
        ends = ends[encoded.offset:encoded.offset + len(encoded) + 1].astype(np.int64)
        packed = Text(b"" if data is None else memoryview(data)[ends[0]:ends[-1]].tobytes(),
                      ends[1:] - ends[0])
        return (text.to_numpy(zero_copy_only=False), encoded.to_numpy(zero_copy_only=False),
                packed)
    return [(null if v is None and null is not None else str(v))
            for v in column.to_pylist()], None, None


def _embeddings(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """(n, D) floats from a fixed-size or variable list column (every list of length D)."""
    array = column.combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)):
        raise BadInput(f"{path}: the embedding column is {array.type}, not a list of floats")
    if array.null_count:
        raise BadInput(f"{path}: {array.null_count} rows have no embedding: drop them")
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
    else:
        lengths = np.diff(array.offsets.to_numpy())
        width = int(lengths[0]) if len(lengths) else 0
        if (lengths != width).any():
            raise BadInput(f"{path}: embeddings have lengths {sorted(set(lengths.tolist()))[:3]}"
                           ": every row needs the same dimension")
    values = array.flatten().to_numpy(zero_copy_only=False)
    if values.dtype.kind != "f":
        raise BadInput(f"{path}: embeddings are {values.dtype}, not floating point")
    return values.reshape(len(array), width)
