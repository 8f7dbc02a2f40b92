"""A cache's contents as immutable values: `CacheInfo`, key `Segment`s, `Keys`, `CacheState`.

Every change to a `Cache` makes a new `CacheState`; nothing derived from a state (joined key
columns, the adapter, the FAISS index) has to be reset by hand, it is tied to the value it was
computed from.
"""

from __future__ import annotations

import functools
import math
import types
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from ..errors import BadInput
from ..method.affinity import WEIGHTINGS
from ..method.gda import GDAStats
from ..provenance import Provenance
from ..util.jsonfile import known_fields
from .text import check_text

COMPACT_FRACTION = 0.1  # merge the key segments when the added keys exceed this share
MAX_SEGMENTS = 16


@dataclass(frozen=True)
class CacheInfo:
    """Everything about a cache except its arrays: what `cache.json` records."""

    classes: list[str]
    provenance: Provenance
    alpha: float = 1.0
    beta: float = 1.0
    method: str = "tip"
    store_id: str | None = None
    store_generation: int | None = None
    store_path: str | None = None
    shots: int | None = None  # None: every labelled row
    seed: int = 0
    split: str = "train"
    index_spec: str = "Flat"
    index_params: str = ""  # FAISS search parameters, e.g. "nprobe=16" for IVF
    templates: str | None = None  # prompt templates used for the text classifier, if known
    text_source: str | None = None  # text-classifier file the text came from, if any
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # tune/finetune records
    cache_id: str | None = None  # made once per cache (`new_cache_id`), kept by every generation
    weighting: str = "balanced"  # class weights of the cache term: "balanced" or "sum"
    gda_alpha: float = 1.0  # weight of the GDA term beside the text logits (method "gda")
    gda_fit: str | None = None  # what the GDA statistics were fitted on: "views" or "keys"
    key_version: int = 0  # add-shots / remove-shots so far
    tuned_version: int | None = None  # key_version when alpha/beta were last chosen on val
    tune_source: dict[str, str] | None = None  # {"store", "split"} of the last tune on a store

    def __post_init__(self) -> None:
        """BadInput when a field has the wrong type or alpha/beta are not usable."""
        for f in fields(self):
            value, hint = getattr(self, f.name), _hints()[f.name]
            if not _has_type(value, hint):
                raise BadInput(f"cache field {f.name} is {value!r}, not "
                               f"{getattr(hint, '__name__', hint)}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise BadInput(f"alpha must be a finite number >= 0, got {self.alpha}",
                           "tune the cache again or set alpha >= 0")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise BadInput(f"beta must be a finite number > 0, got {self.beta}",
                           "tune the cache again or set beta > 0")
        if self.method not in ("tip", "tip-f"):
            raise BadInput(f"cache method {self.method!r} is not tip or tip-f")
        if self.weighting not in WEIGHTINGS:
            raise BadInput(f"cache weighting {self.weighting!r} is not {' or '.join(WEIGHTINGS)}")

    def stale_tuning(self) -> str | None:
        """A one-line warning when alpha/beta were tuned for an earlier set of shots."""
        if self.tuned_version is None or self.tuned_version == self.key_version:
            return None
        changes = self.key_version - self.tuned_version
        return (f"alpha/beta were tuned for an earlier generation of this cache's shots "
                f"({changes} add/remove-shots since): tune again with `Cache.retune()`")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["provenance"] = self.provenance.to_json()
        out["history"] = list(self.history)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CacheInfo:
        obj = known_fields(cls, obj)
        obj["provenance"] = Provenance.from_json(obj["provenance"])
        obj["history"] = tuple(obj.get("history", ()))
        return cls(**obj)

    def with_record(self, record: dict[str, Any] | None, **changes: Any) -> CacheInfo:
        """A copy with `changes` and `record` appended to a new history."""
        history = self.history if record is None else (*self.history, dict(record))
        return replace(self, **changes, history=history)


def new_cache_id() -> str:
    """A new unique cache id: a rebuilt cache is another cache, even at the same path."""
    return uuid.uuid4().hex


@functools.cache
def _hints() -> dict[str, Any]:
    return get_type_hints(CacheInfo)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether `value` (as read from JSON) fits the annotation `hint` of a `CacheInfo` field."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin in (list, tuple):
        return isinstance(value, origin) and all(_has_type(v, args[0]) for v in value)
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


@dataclass(frozen=True, eq=False)
class Segment:
    """An immutable slice of the keys, in memory and (once saved) in `file`."""

    keys: np.ndarray
    labels: np.ndarray
    row_ids: np.ndarray
    file: str | None = None

    @classmethod
    def of(cls, keys: np.ndarray, labels: np.ndarray, row_ids: np.ndarray) -> Segment:
        """A new (unsaved) segment with the canonical dtypes."""
        return cls(np.ascontiguousarray(keys, dtype=np.float32),
                   np.asarray(labels, dtype=np.int64).reshape(-1),
                   np.asarray(row_ids, dtype=np.int64).reshape(-1))


@dataclass(frozen=True, eq=False)
class Keys:
    """The key segments of a cache; each column joined once, on first use."""

    segments: tuple[Segment, ...]

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the segments only (the joined columns are rebuilt on first use)."""
        return {"segments": self.segments}

    def _joined(self, name: str) -> np.ndarray:
        parts = [getattr(s, name) for s in self.segments]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @cached_property
    def keys(self) -> np.ndarray:
        return self._joined("keys")

    @cached_property
    def labels(self) -> np.ndarray:
        return self._joined("labels")

    @cached_property
    def row_ids(self) -> np.ndarray:
        return self._joined("row_ids")

    def __len__(self) -> int:
        return sum(len(s.labels) for s in self.segments)

    def whole(self) -> Keys:
        """The same keys as one unsaved segment."""
        return Keys((Segment(self.keys, self.labels, self.row_ids),))

    def unsaved(self) -> Keys:
        """The same segments, none of them in a file (for a save to another directory)."""
        return Keys(tuple(replace(s, file=None) for s in self.segments))

    def needs_compaction(self) -> bool:
        """Whether a save should merge the segments into one (and rebuild the index)."""
        base = len(self.segments[0].labels)
        added = len(self) - base
        return len(self.segments) > MAX_SEGMENTS or added > COMPACT_FRACTION * max(base, 1) \
            or (self.segments[0].file is None and len(self.segments) > 1)


@dataclass(frozen=True, eq=False)
class CacheState:
    """What a cache holds at one moment: its info, keys and text classifier (C, D) or None."""

    info: CacheInfo
    keys: Keys
    text: np.ndarray | None
    gda: GDAStats | None = None  # GDA statistics (None: fitted on the keys when first used)

    @classmethod
    def make(cls, keys: np.ndarray, labels: np.ndarray, row_ids: np.ndarray, info: CacheInfo,
             text: np.ndarray | None = None, gda: GDAStats | None = None) -> CacheState:
        """A one-segment state, checked: shapes, labels in range, unique row ids, text shape."""
        segment = Segment.of(keys, labels, row_ids)
        dim = info.provenance.dim
        if segment.keys.ndim != 2 or segment.keys.shape[1] != dim:
            raise BadInput(f"keys must be (M, {dim}), got {segment.keys.shape}")
        if not (len(segment.labels) == len(segment.row_ids) == len(segment.keys)):
            raise BadInput("keys, labels and row ids need one entry per key")
        _check_labels(segment.labels, len(info.classes))
        if len(np.unique(segment.row_ids)) != len(segment.row_ids):
            raise BadInput("row ids of the cache keys must be unique")
        return cls(info, Keys((segment,)), check_text(text, len(info.classes), dim), gda)

    def checked(self) -> CacheState:
        """This state, if its arrays agree with its info (as read from files); else BadInput."""
        keys, dim = self.keys, self.info.provenance.dim
        if keys.keys.ndim != 2 or keys.keys.shape[1] != dim or keys.keys.dtype != np.float32:
            raise BadInput(f"keys are {keys.keys.dtype} {keys.keys.shape}, not (M, {dim})")
        if not (len(keys.labels) == len(keys.row_ids) == len(keys.keys)):
            raise BadInput("keys, labels and row ids need one entry per key")
        _check_labels(keys.labels, len(self.info.classes))
        if len(np.unique(keys.row_ids)) != len(keys):
            raise BadInput("the cache holds repeated row ids")
        check_text(self.text, len(self.info.classes), dim)
        if self.gda is not None and (self.gda.sums.shape != (len(self.info.classes), dim) or
                                     self.gda.scatter.shape != (dim, dim)):
            raise BadInput(f"GDA statistics cover {self.gda.sums.shape}, not "
                           f"({len(self.info.classes)}, {dim})")
        return self

    def with_keys(self, keys: np.ndarray, method: str) -> CacheState:
        """The same cache with every key replaced (same order, labels and row ids)."""
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        if keys.shape != self.keys.keys.shape:
            raise BadInput(f"new keys have shape {keys.shape}, the cache has "
                           f"{self.keys.keys.shape}")
        whole = Segment(keys, self.keys.labels, self.keys.row_ids)
        return replace(self, keys=Keys((whole,)), info=replace(self.info, method=method))

    def without(self, row_ids: Sequence[int] | np.ndarray,
                gda: GDAStats | None = None) -> CacheState:
        """The cache without the keys of these store row ids (each must be a key), with the
        GDA statistics `gda` (updated by the caller) and the key version moved on."""
        row_ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
        missing = row_ids[~np.isin(row_ids, self.keys.row_ids)]
        if len(missing):
            raise BadInput(f"row ids {missing[:5].tolist()} are not keys of this cache",
                           "check the ids: the keys' row ids are `Cache.load(path).row_ids`")
        keep = ~np.isin(self.keys.row_ids, row_ids)
        kept = Segment(self.keys.keys[keep], self.keys.labels[keep], self.keys.row_ids[keep])
        info = replace(self.info, key_version=self.info.key_version + 1)
        return replace(self, keys=Keys((kept,)), info=info, gda=gda)

    def plus(self, segment: Segment, info: CacheInfo, text: np.ndarray | None,
             gda: GDAStats | None = None) -> CacheState:
        """The cache with one more key segment (new row ids only) under `info`, `text` and the
        GDA statistics `gda`, the key version moved on."""
        clash = np.isin(segment.row_ids, self.keys.row_ids)
        if clash.any() or len(np.unique(segment.row_ids)) != len(segment.row_ids):
            dup = segment.row_ids[clash][:5] if clash.any() else segment.row_ids[:5]
            raise BadInput(f"row ids {dup.tolist()} are already keys of the cache (or repeated)",
                           "remove them first or leave them out")
        _check_labels(segment.labels, len(info.classes))
        keys = Keys((*self.keys.segments, segment))
        info = replace(info, key_version=info.key_version + 1)
        return CacheState(info, keys, check_text(text, len(info.classes), info.provenance.dim),
                          gda)


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise BadInput(f"key labels must be class indices in [0, {num_classes})")
