"""The store manifest: the one JSON file naming a store's state (shards, classes, provenance)."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import BadInput, CorruptData
from ..provenance import Provenance
from ..util.atomic import write_json

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ShardInfo:
    """One immutable shard file: its rows, checksum and per-split/per-label counts.

    Rows of a shard have the consecutive row ids `first_row_id .. first_row_id + rows - 1`.
    `counts[split][label]` lets class and split counts be answered without reading shards.
    """

    name: str
    rows: int
    first_row_id: int
    sha256: str
    nbytes: int
    views: int = 0
    has_sources: bool = False
    counts: dict[str, dict[int, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ShardInfo:
        counts = {s: {int(k): int(v) for k, v in c.items()} for s, c in obj["counts"].items()}
        return cls(
            name=str(obj["name"]), rows=int(obj["rows"]), first_row_id=int(obj["first_row_id"]),
            sha256=str(obj["sha256"]), nbytes=int(obj["nbytes"]), views=int(obj["views"]),
            has_sources=bool(obj["has_sources"]), counts=counts,
        )


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

    @classmethod
    def new(cls, *, dim: int, dtype: str, provenance: Provenance, classes=()) -> Manifest:
        """The manifest of an empty store with a fresh store id."""
        return cls(
            store_id=uuid.uuid4().hex, generation=0, dim=dim, dtype=dtype, provenance=provenance,
            classes=tuple(classes), next_row_id=0, shards=(),
        )

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def with_shard(self, shard: ShardInfo) -> Manifest:
        """The next generation with `shard` appended."""
        return replace(
            self, generation=self.generation + 1, shards=self.shards + (shard,),
            next_row_id=shard.first_row_id + shard.rows,
        )

    def with_classes(self, classes: tuple[str, ...]) -> Manifest:
        """This manifest with a new class vocabulary (the generation moves on when it changes)."""
        if classes == self.classes:
            return self
        return replace(self, generation=self.generation + 1, classes=classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "store_id": self.store_id,
            "generation": self.generation,
            "dim": self.dim,
            "dtype": self.dtype,
            "provenance": self.provenance.to_json(),
            "classes": list(self.classes),
            "next_row_id": self.next_row_id,
            "shards": [s.to_json() for s in self.shards],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Manifest:
        return cls(
            format_version=int(obj["format_version"]), store_id=str(obj["store_id"]),
            generation=int(obj["generation"]), dim=int(obj["dim"]), dtype=str(obj["dtype"]),
            provenance=Provenance.from_json(obj["provenance"]),
            classes=tuple(str(c) for c in obj["classes"]), next_row_id=int(obj["next_row_id"]),
            shards=tuple(ShardInfo.from_json(s) for s in obj["shards"]),
        )

    def save(self, store_dir: Path) -> None:
        """Atomically replace the store's manifest with this one."""
        write_json(store_dir / MANIFEST_NAME, self.to_json())

    @classmethod
    def load(cls, store_dir: Path) -> Manifest:
        """Read a store's manifest; BadInput for a non-store or a newer format version."""
        path = store_dir / MANIFEST_NAME
        if not path.is_file():
            raise BadInput(f"{store_dir} is not a tipretrieval store (no {MANIFEST_NAME})",
                           "check the path, or create one by importing or extracting into it")
        try:
            obj = json.loads(path.read_text())
            version = int(obj["format_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptData(f"{path} is not a valid store manifest ({exc}): restore it") from exc
        if version > FORMAT_VERSION:
            raise BadInput(
                f"store {store_dir} has format version {version}, newer than the supported "
                f"{FORMAT_VERSION}: upgrade tipretrieval to read it"
            )
        try:
            return cls.from_json(obj)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptData(f"{path} is not a valid store manifest ({exc}): restore it") from exc
