"""Compaction: merge runs of small consecutive shards into fewer, larger ones, atomically.

Under the writer lock, each run of consecutive shards with the same layout (views, sources)
whose data fits `target_bytes` is checked (checksum and values), read and written as one new shard
with the same row ids, ids and values (as stored: float16 stays bit-identical); then the
manifest naming the new shards replaces the old one, and only then are the old files removed.
A kill before the manifest is replaced leaves the old state plus unnamed new files; a kill
after it leaves the new state plus unnamed old files; the next write removes either kind.
Readers that opened the old manifest keep reading shards they have open; opening a removed
one is a clear error telling them to rerun.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from ..rows import Rows
from .manifest import FORMAT_VERSION, Manifest, ShardInfo
from .shard import IdKeys, ShardReader, verify_shard, write_shard

log = logging.getLogger(__name__)

TARGET_BYTES = 64 << 20


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did: shard counts before and after, and the new generation."""

    shards_before: int
    shards_after: int
    merged: int
    generation: int


def plan(shards: tuple[ShardInfo, ...], target_bytes: int) -> list[list[ShardInfo]]:
    """Runs of >= 2 consecutive shards of one layout whose files total <= `target_bytes`."""
    runs: list[list[ShardInfo]] = []
    run: list[ShardInfo] = []
    for info in shards:
        layout = (info.views, info.has_sources)
        if run and ((run[0].views, run[0].has_sources) != layout or
                    sum(s.nbytes for s in run) + info.nbytes > target_bytes):
            runs.append(run)
            run = []
        run.append(info)
    runs.append(run)
    return [r for r in runs if len(r) > 1]


def _merged_rows(shard_dir: Path, run: list[ShardInfo], manifest: Manifest) -> Rows:
    """The rows of a run of shards, each checked first (so no damage gets a new checksum)."""
    parts = []
    nonzero = manifest.provenance.normalized
    for info in run:
        verify_shard(shard_dir, info)
        with ShardReader(shard_dir, info, manifest.dim) as shard:
            block = shard.read(0, info.rows, with_views=True)
            shard.check_features(0, block.features, nonzero)
            if block.views is not None:
                shard.check_features(0, block.views, nonzero)
            shard.check_labels(block.labels, len(manifest.classes))
        parts.append(block.to_rows())
    return Rows.concat(parts)


def compact_shards(store_dir: Path, shard_dir: Path, manifest: Manifest,
                   target_bytes: int = TARGET_BYTES) -> tuple[Manifest, list[Path]]:
    """Write the merged shards of `manifest` (the caller holds the writer lock) and return the
    manifest naming them (not yet saved) and the old files to remove once it is saved."""
    replaced: dict[str, ShardInfo | None] = {}
    for run in plan(manifest.shards, target_bytes):
        rows = _merged_rows(shard_dir, run, manifest)
        first = run[0].first_row_id
        name = f"{first:012d}-{uuid.uuid4().hex[:8]}.h5"
        info = write_shard(shard_dir / name, rows, first, manifest.dtype,
                           IdKeys.of(rows.ids, manifest.id_hash))
        if info.rows != sum(s.rows for s in run):
            raise AssertionError(f"merged shard {name} has {info.rows} rows")
        replaced[run[0].name] = info
        replaced.update({s.name: None for s in run[1:]})
        log.info("merged %d shards (%d rows) into %s", len(run), info.rows, name)
    if not replaced:
        return manifest, []
    shards = tuple(replaced.get(s.name, s) for s in manifest.shards)
    new = replace(manifest, generation=manifest.generation + 1, format_version=FORMAT_VERSION,
                  shards=tuple(s for s in shards if s is not None))
    if new.problem():
        raise AssertionError(f"compaction made an inconsistent manifest: {new.problem()}")
    old = [shard_dir / s.name for s in manifest.shards if s.name in replaced]
    return new, old



def remove_replaced(paths: list[Path]) -> None:
    """Delete the shards a saved compaction replaced; any left (an error, a kill) are orphans
    that the next write removes."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
