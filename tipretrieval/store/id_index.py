"""The store-level id index: the 64-bit hash and row id of every stored id, as sorted runs.

A run is one file (named, with its sha256 and row count, by the manifest) holding the entries
of consecutive row ids sorted by hash, 16 bytes per row; the runs cover row ids 0.. in order.
An append looks its ids up in every run and opens only the shards of the (rare) hash hits to
confirm them, so its cost does not grow with the number of shards. It then writes one new
file: its own ids as a run, merged with the trailing runs no larger than it (up to
MAX_MERGED_ROWS entries), so a small append writes a small file, a store holds about
log2(MAX_MERGED_ROWS) + rows / MAX_MERGED_ROWS runs and each entry is rewritten a few times in
all (format 2 rewrote the whole index on every append). `merge_all` (used by
`compact`) makes one run. A missing or damaged run makes the index be rebuilt from the shards'
ids (and written back as one run by the next write), so it never decides alone that an id is
new. A format 2 store's one index file is read as its only run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptData
from ..util.atomic import atomic_path
from .manifest import IdIndexInfo, Manifest
from .shard import IdKeys

log = logging.getLogger(__name__)

ENTRY = np.dtype([("hash", "<u8"), ("row", "<i8")])
# An append merges runs only up to this many entries (32 MB), so that its memory stays small
# however big the store; `merge_all` makes one run of any size.
MAX_MERGED_ROWS = 1 << 21
_WRITE_ROWS = 1 << 16
PREFIX = "ids-"
SUFFIX = ".idx"


@dataclass(frozen=True)
class Run:
    """One run: its entries' hashes (sorted) and row ids, each a contiguous array."""

    hashes: np.ndarray
    rows: np.ndarray

    @classmethod
    def of(cls, entries: np.ndarray) -> Run:
        return cls(np.ascontiguousarray(entries["hash"]), np.ascontiguousarray(entries["row"]))

    def __len__(self) -> int:
        return len(self.hashes)

    def entries(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Entries `start:stop` as stored (ENTRY records)."""
        hashes = self.hashes[start:stop]
        out = np.empty(len(hashes), dtype=ENTRY)
        out["hash"], out["row"] = hashes, self.rows[start:stop]
        return out

    def candidates(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `hashes` (sorted), stored row id) of every entry equal to a hash."""
        if not len(self.hashes):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        lo = np.searchsorted(self.hashes, hashes, "left")
        some = np.flatnonzero(self.hashes[np.minimum(lo, len(self.hashes) - 1)] == hashes)
        lo = lo[some]  # (the right ends only of the hashes present: half the searching)
        hits = np.searchsorted(self.hashes, hashes[some], "right") - lo
        query = np.repeat(some, hits)
        pos = np.arange(len(query)) - np.repeat(np.cumsum(hits) - hits, hits) + \
            np.repeat(lo, hits)
        return query, self.rows[pos]


@dataclass(frozen=True)
class IdIndex:
    """The id index of a store: its runs and the files they are, or no files when it was
    rebuilt from the shards (then the next write stores it as one run)."""

    runs: tuple[Run, ...]
    files: tuple[IdIndexInfo, ...]

    def candidates(self, keys: IdKeys) -> tuple[np.ndarray, np.ndarray]:
        """(id position, stored row id) of every entry whose hash equals the hash of an id of
        `keys` (searched in hash order: several times faster than in random order)."""
        hashes = keys.hashes[keys.order]
        found = [run.candidates(hashes) for run in self.runs]
        query = np.concatenate([q for q, _ in found] + [np.empty(0, np.int64)])
        return (keys.order[query],
                np.concatenate([r for _, r in found] + [np.empty(0, np.int64)]))


def _read(store_dir: Path, info: IdIndexInfo) -> Run | None:
    """The run of file `info` when it is present and intact, else None."""
    try:
        data = (store_dir / info.name).read_bytes()
    except OSError:
        return None
    if len(data) != info.rows * ENTRY.itemsize or hashlib.sha256(data).hexdigest() != info.sha256:
        return None
    return Run.of(np.frombuffer(data, dtype=ENTRY))


def _key(info: IdIndexInfo) -> str:
    return f"{info.name}/{info.sha256}"


def load(store_dir: Path, manifest: Manifest, cache: dict[str, Run] | None = None
         ) -> IdIndex | None:
    """The manifest's index when every run is present and intact and they cover every row,
    else None. `cache` holds runs read (and checked) before, by file name and sha256: run files
    are never changed, so a writer that appends many times reads each run once."""
    files = manifest.id_runs
    if sum(f.rows for f in files) != manifest.rows:
        return None
    runs = []
    for info in files:
        run = None if cache is None else cache.get(_key(info))
        run = _read(store_dir, info) if run is None else run
        if run is None:
            log.warning("the id index run %s of store %s is missing or damaged: rebuilding the "
                        "index from the shards", info.name, store_dir)
            return None
        runs.append(run)
    index = IdIndex(tuple(runs), files)
    if cache is not None:
        remember(cache, index)
    return index


def remember(cache: dict[str, Run], index: IdIndex) -> None:
    """Keep the runs of `index` (only them: memory stays one index) in `cache` for `load`."""
    cache.clear()
    cache.update({_key(f): r for f, r in zip(index.files, index.runs, strict=True)})


def build(hashes: np.ndarray, rows: np.ndarray) -> Run:
    """A run of the given id hashes and their row ids (equal hashes given in row order)."""
    order = np.argsort(hashes, kind="stable")  # so by hash, then row
    return Run(hashes[order], rows[order])


def _merged(runs: list[Run]) -> Run:
    """One run of the entries of `runs` (given in row id order)."""
    if len(runs) == 1:
        return runs[0]
    return build(np.concatenate([r.hashes for r in runs]), np.concatenate([r.rows for r in runs]))


def name(generation: int) -> str:
    """The file name of the run written for the manifest of `generation`."""
    return f"{PREFIX}{generation:012d}{SUFFIX}"


def _write(store_dir: Path, run: Run, generation: int) -> IdIndexInfo:
    """Write `run` as a new file (atomic) for the manifest of `generation`, a block of
    entries at a time (no copy of the whole run)."""
    digest = hashlib.sha256()
    with atomic_path(store_dir / name(generation)) as tmp, open(tmp, "wb") as f:
        for a in range(0, len(run), _WRITE_ROWS):
            block = run.entries(a, a + _WRITE_ROWS)
            digest.update(block)
            f.write(block)
    return IdIndexInfo(name=name(generation), rows=len(run), sha256=digest.hexdigest())


def appended(store_dir: Path, index: IdIndex, keys: IdKeys, first_row_id: int,
             generation: int) -> IdIndex:
    """`index` plus the ids of `keys` at row ids `first_row_id, ...`: writes them as one new
    run file for the manifest of `generation`, merged with the trailing runs no larger than the
    result (all of a rebuilt index's); returns the index whose files the manifest names."""
    run = Run(keys.hashes[keys.order], keys.order.astype(np.int64) + first_row_id)
    keep = len(index.files) if index.files else 0
    runs, merged = list(index.runs), len(run)
    while keep and len(runs[keep - 1]) <= merged and \
            len(runs[keep - 1]) + merged <= MAX_MERGED_ROWS:
        keep -= 1
        merged += len(runs[keep])
    run = _merged(runs[keep:] + [run])
    info = _write(store_dir, run, generation)
    return IdIndex(tuple(runs[:keep]) + (run,), index.files[:keep] + (info,))


def merge_all(store_dir: Path, index: IdIndex, generation: int) -> IdIndex:
    """`index` as one run, written for the manifest of `generation` (`compact`)."""
    if not index.runs:
        return IdIndex((), ())
    run = _merged(list(index.runs))
    return IdIndex((run,), (_write(store_dir, run, generation),))


def verify(store_dir: Path, manifest: Manifest) -> None:
    """CorruptData naming the first run file that is missing, truncated or fails its sha256."""
    for info in manifest.id_runs:
        if _read(store_dir, info) is None:
            raise CorruptData(f"id index run {info.name} of store {store_dir} is missing or "
                              "fails its sha256 checksum",
                              "run `tipretrieval compact` to rebuild the index from the shards")
