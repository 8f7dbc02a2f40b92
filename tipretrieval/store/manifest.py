"""The store manifest: the one JSON file naming a store's state (shards, classes, provenance).

Format 2 adds a sha256 of the manifest's own content (a hand-edited or damaged manifest is
refused), a store-level id index file (`id_index`) and format 2 shards (see `shard`). Format 3
names the id index as a list of run files (`id_runs`, see `id_index`) so that an append adds
a small file instead of rewriting the whole index. Every manifest is checked on load: shard row
ranges tile the row ids, counts add up, dim and classes are sane. Format 1-3 stores are read
and appended to (an append writes the current format: a format 2 index file becomes the first
run). Format 4 records each shard's checksum as `digest`, "<algorithm>:<hex>": shards written from
format 4 on are hashed with xxh3_128 from a memory map (reading each new shard back for its
sha256 was the largest avoidable cost of an import), those of older stores keep their sha256
("sha256:<hex>"); an append or a compaction writes format 4. Format 4 also names the store's
id hash (`id_hash`, see `store.id_hash`): xxh3_64 for stores it creates, blake2b_8 (implied by
formats 1-3) for older stores, which keep it. Newer formats are refused
(`FORMAT`, the version policy of `util.jsonfile`).
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import BadInput, CorruptData
from ..provenance import Provenance
from ..util.checksum import DIGESTS
from ..util.jsonfile import DocumentFormat
from .id_hash import ALGORITHMS as ID_HASHES
from .id_hash import NEW as NEW_ID_HASH
from .id_hash import OLD as OLD_ID_HASH

FORMAT_VERSION = 4
MANIFEST_NAME = "manifest.json"
_FIX = "restore it from a backup (a manifest must never be edited)"
DTYPES = ("float16", "float32")
SHARD_NAME = re.compile(r"\d{12}-[0-9a-f]+\.h5")
RUN_NAME = re.compile(r"ids-\d{12}\.idx")


@dataclass(frozen=True)
class ShardInfo:
    """One immutable shard file: its rows, checksum (`digest`: "<algorithm>:<hex>" of the file,
    see `util.checksum`) and per-split/per-label counts.

    Rows of a shard have the consecutive row ids `first_row_id .. first_row_id + rows - 1`.
    `counts[split][label]` lets class and split counts be answered without reading shards.
    """

    name: str
    rows: int
    first_row_id: int
    digest: str
    nbytes: int
    views: int = 0
    has_sources: bool = False
    counts: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def end_row_id(self) -> int:
        """One past the shard's last row id."""
        return self.first_row_id + self.rows

    @property
    def algorithm(self) -> str:
        """The checksum's algorithm (a key of `util.checksum.DIGESTS`)."""
        return self.digest.partition(":")[0]

    def to_json(self, format_version: int = FORMAT_VERSION) -> dict[str, Any]:
        """As JSON data (label keys as strings, as JSON reads them back; not to be changed:
        it is made once, as every commit saves the manifest of every shard); a format 1-3
        manifest (only ever holding sha256 digests) names the checksum `sha256`."""
        if format_version >= 4:
            return self._json
        legacy = {k: v for k, v in self._json.items() if k != "digest"}
        return {**legacy, "sha256": self.digest.removeprefix("sha256:")}

    @functools.cached_property
    def _json(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "first_row_id": self.first_row_id,
                "digest": self.digest, "nbytes": self.nbytes, "views": self.views,
                "has_sources": self.has_sources,
                "counts": {s: {str(k): v for k, v in c.items()} for s, c in self.counts.items()}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ShardInfo:
        counts = {str(s): {int(k): int(v) for k, v in c.items()}
                  for s, c in obj["counts"].items()}
        return cls(
            name=str(obj["name"]), rows=int(obj["rows"]), first_row_id=int(obj["first_row_id"]),
            digest=str(obj["digest"]) if "digest" in obj else f"sha256:{obj['sha256']}",
            nbytes=int(obj["nbytes"]), views=int(obj["views"]),
            has_sources=bool(obj["has_sources"]), counts=counts,
        )


@dataclass(frozen=True)
class IdIndexInfo:
    """One file of the store-level id index: the id hashes of `rows` consecutive row ids
    (format 2: the only file, of row ids `0 .. rows - 1`)."""

    name: str
    rows: int
    sha256: str

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IdIndexInfo:
        return cls(name=str(obj["name"]), rows=int(obj["rows"]), sha256=str(obj["sha256"]))


def _one_shard_a_line(doc: dict[str, Any]) -> str:
    """The manifest as text, one shard a line: readable, and encoded by json's C encoder (an
    indented dump is pure Python, which made appends to stores of many shards slow)."""
    head = {k: v for k, v in doc.items() if k != "shards"}
    lines = ",\n  ".join(json.dumps(s, ensure_ascii=False) for s in doc["shards"])
    return f'{json.dumps(head, ensure_ascii=False)[:-1]}, "shards": [\n  {lines}\n]}}\n'


FORMAT = DocumentFormat("store manifest", FORMAT_VERSION, version_key="format_version",
                        sealed_from=2, dump=_one_shard_a_line)


@dataclass(frozen=True)
class Manifest:
    """A store's complete state; replaced atomically as a whole, never edited in place."""

    store_id: str
    generation: int
    dim: int
    dtype: str
    provenance: Provenance
    classes: tuple[str, ...]
    next_row_id: int
    shards: tuple[ShardInfo, ...]
    format_version: int = FORMAT_VERSION
    id_runs: tuple[IdIndexInfo, ...] = ()  # the id index files, in row id order
    id_hash: str = OLD_ID_HASH  # how its ids are hashed (a store's for life)

    @classmethod
    def new(cls, *, dim: int, dtype: str, provenance: Provenance, classes=()) -> Manifest:
        """The manifest of an empty store with a fresh store id."""
        return cls(
            store_id=uuid.uuid4().hex, generation=0, dim=dim, dtype=dtype, provenance=provenance,
            classes=tuple(classes), next_row_id=0, shards=(), id_hash=NEW_ID_HASH,
        )

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def with_shard(self, shard: ShardInfo, id_runs: tuple[IdIndexInfo, ...]) -> Manifest:
        """The next generation (current format) with `shard` appended and its id index."""
        return replace(
            self, generation=self.generation + 1, shards=self.shards + (shard,),
            next_row_id=shard.end_row_id, id_runs=id_runs, format_version=FORMAT_VERSION,
        )

    def with_classes(self, classes: tuple[str, ...]) -> Manifest:
        """This manifest with a new class vocabulary (the generation moves on when it changes)."""
        if classes == self.classes:
            return self
        return replace(self, generation=self.generation + 1, classes=classes)

    def to_json(self) -> dict[str, Any]:
        """The manifest's keys but its format version (`FORMAT` stamps it)."""
        return {
            "store_id": self.store_id,
            "generation": self.generation,
            "dim": self.dim,
            "dtype": self.dtype,
            "provenance": self.provenance.to_json(),
            "classes": list(self.classes),
            "next_row_id": self.next_row_id,
            "shards": [s.to_json(self.format_version) for s in self.shards],
            **({"id_runs": [asdict(r) for r in self.id_runs]} if self.format_version >= 3 else
               {"id_index": asdict(self.id_runs[0]) if self.id_runs else None}),
            **({"id_hash": self.id_hash} if self.format_version >= 4 else {}),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], format_version: int) -> Manifest:
        if format_version >= 3:
            runs = tuple(IdIndexInfo.from_json(r) for r in obj["id_runs"])
        else:  # format 2: one index file or none; format 1: none
            runs = () if obj.get("id_index") is None else (IdIndexInfo.from_json(obj["id_index"]),)
        return cls(
            format_version=format_version, store_id=str(obj["store_id"]),
            generation=int(obj["generation"]), dim=int(obj["dim"]), dtype=str(obj["dtype"]),
            provenance=Provenance.from_json(obj["provenance"]),
            classes=tuple(str(c) for c in obj["classes"]), next_row_id=int(obj["next_row_id"]),
            shards=tuple(ShardInfo.from_json(s) for s in obj["shards"]),
            id_runs=runs,
            id_hash=str(obj.get("id_hash", OLD_ID_HASH)) if format_version >= 4 else OLD_ID_HASH,
        )

    def problem(self) -> str | None:
        """What makes this manifest inconsistent, or None: the invariants every writer keeps."""
        if self.dim < 1 or self.provenance.dim != self.dim:
            return f"dim {self.dim} does not match the encoder's dim {self.provenance.dim}"
        if self.dtype not in DTYPES:
            return f"dtype {self.dtype!r} is not one of {DTYPES}"
        if self.id_hash not in ID_HASHES:
            return f"id hash {self.id_hash!r} is not one of {sorted(ID_HASHES)}"
        if len(set(self.classes)) != len(self.classes) or not all(self.classes):
            return "class names are empty or repeated"
        names = [s.name for s in self.shards]
        if len(set(names)) != len(names) or not all(SHARD_NAME.fullmatch(n) for n in names):
            return "shard names are repeated or not shard file names"
        end = 0
        for s in self.shards:
            if s.first_row_id != end:
                return (f"shard {s.name} starts at row id {s.first_row_id}, not {end} (row id "
                        "ranges must be contiguous and disjoint)")
            total = sum(n for by_label in s.counts.values() for n in by_label.values())
            if s.rows < 1 or total != s.rows:
                return f"shard {s.name} has {s.rows} rows but counts of {total}"
            if s.nbytes < 1 or s.views < 0:
                return f"shard {s.name} has {s.nbytes} bytes and {s.views} views"
            if s.algorithm not in DIGESTS or (self.format_version < 4 and s.algorithm != "sha256"):
                return f"shard {s.name} has a checksum of unknown kind ({s.digest[:20]!r})"
            labels = {label for by_label in s.counts.values() for label in by_label}
            if labels and (min(labels) < -1 or max(labels) >= len(self.classes)):
                return f"shard {s.name} counts labels outside -1..{len(self.classes) - 1}"
            end = s.end_row_id
        if self.next_row_id != end:
            return f"next row id {self.next_row_id} is not the end of the last shard ({end})"
        names = [r.name for r in self.id_runs]
        if len(set(names)) != len(names) or not all(RUN_NAME.fullmatch(n) for n in names):
            return "id index runs are repeated or not id index file names"
        for r in self.id_runs:
            if r.rows < 1:
                return f"id index run {r.name} has {r.rows} rows"
        covered = sum(r.rows for r in self.id_runs)
        if covered > end:
            return f"the id index covers {covered} rows of {end}"
        return None

    def save(self, store_dir: Path) -> None:
        """Atomically replace the store's manifest with this one (sealed with its checksum)."""
        FORMAT.write(store_dir / MANIFEST_NAME, self.to_json(), self.format_version)

    @classmethod
    def load(cls, store_dir: Path) -> Manifest:
        """Read and check a store's manifest; BadInput for a non-store, NewerFormat for a newer
        format, CorruptData for a damaged, edited or inconsistent one."""
        path = store_dir / MANIFEST_NAME
        if not path.is_file():
            raise BadInput(f"{store_dir} is not a tipretrieval store (no {MANIFEST_NAME})",
                           "check the path, or create one by importing or extracting into it")
        doc = FORMAT.read(path, _FIX)
        manifest = doc.parse(lambda body: cls.from_json(body, doc.version), _FIX)
        problem = manifest.problem()
        if problem:
            raise CorruptData(f"the {FORMAT.name} {path} is inconsistent ({problem})", _FIX)
        return manifest
