"""The cache directory format: generations named by one atomically replaced `cache.json`.

`cache.json` names the current generation and is replaced last. It lists immutable key segments
(`keys-g<N>-<i>.npz`: keys, labels, row ids), the text classifier (`text-g<N>.npy`) and the
FAISS index (`index-g<N>.faiss`) plus how many segments that index already holds. Adding shots
writes one small segment and a new JSON, so a cache of a million keys grows without rewriting
its keys or index; segments are merged once the deltas grow past `COMPACT_FRACTION`. A reader
that loaded generation g keeps working while g+1 is written: files of the previous generation
are kept, older ones deleted. Writers hold `.cache.lock`; readers retry while a writer moves on.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from ..errors import BadInput, CorruptData, TipError
from ..provenance import Provenance
from ..util.atomic import atomic_path, write_json

FORMAT = "tipretrieval-cache"
VERSION = 1
META = "cache.json"
LOCK_NAME = ".cache.lock"
COMPACT_FRACTION = 0.1  # merge the key segments when the added keys exceed this share
MAX_SEGMENTS = 16
_PREFIXES = ("keys-g", "text-g", "index-g")
_LOAD_TRIES = 5


@dataclass
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
    history: list[dict[str, Any]] = field(default_factory=list)  # tune/finetune records

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["provenance"] = self.provenance.to_json()
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CacheInfo:
        obj = dict(obj)
        obj["provenance"] = Provenance.from_json(obj["provenance"])
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in names})


@dataclass(frozen=True)
class Segment:
    """An immutable slice of the keys, in memory and (once saved) in `file`."""

    keys: np.ndarray
    labels: np.ndarray
    row_ids: np.ndarray
    file: str | None = None


@dataclass(frozen=True)
class Files:
    """The files of one generation, as `cache.json` lists them."""

    segments: list[str]
    text: str | None
    index: str
    index_segments: int  # how many leading segments `index` holds

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Files:
        return cls(list(obj["segments"]), obj.get("text"), obj["index"],
                   int(obj["index_segments"]))

    def names(self) -> set[str]:
        return {*self.segments, self.index, *([self.text] if self.text else [])}


@dataclass(frozen=True)
class Generation:
    """One loaded generation: its number, what `cache.json` records and its arrays."""

    number: int
    info: CacheInfo
    files: Files
    segments: list[Segment]
    text: np.ndarray | None


def lock(path: Path) -> FileLock:
    """The writer lock of the cache directory `path` (use it as a context manager)."""
    return FileLock(str(path / LOCK_NAME))


def needs_compaction(segments: list[Segment]) -> bool:
    """Whether the next save should merge `segments` into one (and rebuild the index)."""
    base = len(segments[0].labels)
    added = sum(len(s.labels) for s in segments[1:])
    unsaved_base = segments[0].file is None
    return len(segments) > MAX_SEGMENTS or added > COMPACT_FRACTION * max(base, 1) \
        or (unsaved_base and len(segments) > 1)


def write_segment(path: Path, generation: int, i: int, segment: Segment) -> Segment:
    """Save `segment` as key segment `i` of `generation`; returns it with its file name."""
    name = f"keys-g{generation}-{i}.npz"
    with atomic_path(path / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=segment.keys, labels=segment.labels, row_ids=segment.row_ids)
    return replace(segment, file=name)


def write_text(path: Path, generation: int, text: np.ndarray) -> str:
    """Save the text classifier of `generation`; returns its file name."""
    name = f"text-g{generation}.npy"
    with atomic_path(path / name) as tmp, open(tmp, "wb") as f:
        np.save(f, text)
    return name


def index_name(generation: int) -> str:
    """The file name of the FAISS index of `generation`."""
    return f"index-g{generation}.faiss"


def next_generation(path: Path, loaded: int | None) -> tuple[int, Files | None]:
    """The number of the next generation of `path` and the current one's files (None: new).

    `loaded` is the generation the writer started from (None: a new directory for it);
    TipError when another writer has moved the cache on since.
    """
    if not (path / META).exists():
        return 1, None
    meta = _read_meta(path)
    if loaded is not None and meta["generation"] != loaded:
        raise TipError(f"cache {path} changed since it was loaded (generation "
                       f"{meta['generation']}, loaded {loaded}): load it again and repeat the "
                       "change")
    return meta["generation"] + 1, Files.from_json(meta["files"])


def commit(path: Path, generation: int, info: CacheInfo, num_keys: int, files: Files,
           previous: Files | None) -> None:
    """Make `generation` current (replace `cache.json`), then delete files no longer needed."""
    write_json(path / META, {"format": FORMAT, "version": VERSION, "generation": generation,
                             **info.to_json(), "num_keys": num_keys, "files": files.to_json()})
    _collect_garbage(path, files, previous)


def load(path: Path) -> Generation:
    """The current generation of the cache directory `path`, retried while writers replace it."""
    if not (path / META).is_file():
        raise BadInput(f"{path} is not a cache (no {META}): build one with "
                       "`tipretrieval build STORE --shots K --out CACHE`")
    for _ in range(_LOAD_TRIES):
        meta = _read_meta(path)
        try:
            return _read_generation(path, meta)
        except FileNotFoundError as exc:
            if _read_meta(path)["generation"] == meta["generation"]:
                raise CorruptData(f"cache {path} lacks {Path(exc.filename).name}: restore or "
                                  "rebuild the cache") from exc
        except (KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptData(f"cannot read cache {path} ({exc!r}): restore or rebuild the "
                              "cache") from exc
    raise TipError(f"cache {path} keeps changing while it is read: retry when writes stop")


def _read_generation(path: Path, meta: dict[str, Any]) -> Generation:
    """The arrays of the generation `meta` describes; FileNotFoundError when one is gone."""
    files = Files.from_json(meta["files"])
    segments = []
    for name in files.segments:
        with np.load(path / name) as z:
            segments.append(Segment(z["keys"], z["labels"], z["row_ids"], name))
    text = np.load(path / files.text) if files.text else None
    if not (path / files.index).exists():
        raise FileNotFoundError(path / files.index)
    info = CacheInfo.from_json({k: v for k, v in meta.items()
                                if k not in ("format", "version", "generation", "files")})
    return Generation(int(meta["generation"]), info, files, segments, text)


def _read_meta(path: Path) -> dict[str, Any]:
    """The parsed `cache.json` of `path`; CorruptData or BadInput when it cannot be used."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as exc:
        raise CorruptData(f"cannot read {path / META} ({exc}): restore or rebuild the cache"
                          ) from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise BadInput(f"{path} holds cache format {meta.get('format')} v{meta.get('version')}"
                       f", this tipretrieval reads {FORMAT} v{VERSION}: rebuild the cache")
    return meta


def _collect_garbage(path: Path, current: Files, previous: Files | None) -> None:
    """Delete the files that neither the current nor the previous generation uses."""
    keep = current.names() | (previous.names() if previous else set())
    for f in path.iterdir():
        if f.name.startswith(_PREFIXES) and f.name not in keep:
            f.unlink(missing_ok=True)
