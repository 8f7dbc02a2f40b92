"""The cache directory format: generations named by one atomically replaced `cache.json`.

`cache.json` names the current generation and is replaced last. It lists immutable key segments
(`keys-g<N>-<i>.npz`: keys, labels, row ids), the text classifier (`text-g<N>.npy`) and the
FAISS index (`index-g<N>.faiss`) plus how many segments that index already holds. Adding shots
writes one small segment and a new JSON, so a cache of a million keys grows without rewriting
its keys or index; segments are merged once the deltas grow past `COMPACT_FRACTION`. A reader
that loaded generation g keeps working while g+1 is written: files of the previous generation
are kept, older ones deleted. Writers hold `.cache.lock` (StoreLocked after 60 s); readers
retry while a writer moves on. `CacheDir` is one generation and the files it lists: `save`
writes only what a `CacheState` does not share with it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from ..errors import BadInput, ConcurrentChange, CorruptData, StoreLocked
from ..method.index import KeyIndex
from ..util.atomic import atomic_path
from ..util.jsonfile import DocumentFormat
from .state import CacheInfo, CacheState, Keys, Segment

FORMAT = DocumentFormat("cache", 1, tag="tipretrieval-cache")  # cache.json
META = "cache.json"
LOCK_NAME = ".cache.lock"
LOCK_TIMEOUT = 60.0  # seconds a writer waits for another writer, as for a store
_PREFIXES = ("keys-g", "text-g", "index-g")
_LOAD_TRIES = 5


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


@dataclass(frozen=True, eq=False)
class CacheDir:
    """A cache directory at one generation: the files it lists and the text array it holds."""

    path: Path
    generation: int
    files: Files
    text: np.ndarray | None  # the array in `files.text` (identity tells an unchanged classifier)

    def holds_index_of(self, keys: Keys) -> bool:
        """Whether this generation's index file holds the leading segments of `keys`."""
        n = self.files.index_segments
        return n <= len(keys.segments) and \
            [s.file for s in keys.segments[:n]] == self.files.segments[:n]

    def load_index(self, keys: Keys) -> KeyIndex:
        """This generation's index plus the segments of `keys` added after it was written."""
        path = self.path / self.files.index
        if not path.exists():
            raise ConcurrentChange(f"cache {self.path} moved on two generations past the one "
                                   f"loaded (g{self.generation})", "load it again")
        index = KeyIndex.load(path)
        for seg in keys.segments[self.files.index_segments:]:
            index.add(seg.keys, seg.row_ids)
        return index

    def save(self, state: CacheState, index: Callable[[], KeyIndex]) -> tuple[CacheDir, Keys]:
        """Write the next generation of this directory; `index()` gives the current index."""
        return save(self.path, state, index, self)


@contextmanager
def lock(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the writer lock of the cache directory `path`; StoreLocked after `timeout` s."""
    try:
        held = FileLock(str(path / LOCK_NAME), timeout=timeout).acquire()
    except Timeout as exc:
        raise StoreLocked(f"cache {path} is locked by another writer for over {timeout:g} s",
                          "wait for the other tune/add/remove to finish and retry") from exc
    with held:
        yield


def save(target: Path, state: CacheState, index: Callable[[], KeyIndex],
         base: CacheDir | None = None) -> tuple[CacheDir, Keys]:
    """Write `state` as the next generation of `target`; the new directory and saved keys.

    `base` is the generation `state` was loaded from or saved to in `target` (None: none): its
    files that still hold the same content are listed again rather than rewritten.
    ConcurrentChange when another writer has moved `target` on since `base`.
    """
    target.mkdir(parents=True, exist_ok=True)
    with lock(target):
        gen, previous = next_generation(target, base.generation if base else None)
        keys = state.keys if base is not None else state.keys.unsaved()
        if keys.needs_compaction():
            keys = keys.whole()
        keys = Keys(tuple(s if s.file is not None else write_segment(target, gen, i, s)
                          for i, s in enumerate(keys.segments)))
        if state.text is None:
            text = None
        elif base is not None and state.text is base.text:
            text = base.files.text
        else:
            text = write_text(target, gen, state.text)
        if base is not None and base.holds_index_of(keys):
            index_file, covered = base.files.index, base.files.index_segments
        else:
            index_file, covered = index_name(gen), len(keys.segments)
            index().save(target / index_file)
        files = Files([s.file for s in keys.segments], text, index_file, covered)
        commit(target, gen, state.info, len(keys), files, previous)
    return CacheDir(target, gen, files, state.text), keys


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
    ConcurrentChange when another writer has moved the cache on since.
    """
    if not (path / META).exists():
        return 1, None
    meta = _read_meta(path)
    if loaded is not None and meta["generation"] != loaded:
        raise ConcurrentChange(f"cache {path} changed since it was loaded (generation "
                               f"{meta['generation']}, loaded {loaded})",
                               "load it again and repeat the change")
    return meta["generation"] + 1, Files.from_json(meta["files"])


def commit(path: Path, generation: int, info: CacheInfo, num_keys: int, files: Files,
           previous: Files | None) -> None:
    """Make `generation` current (replace `cache.json`), then delete files no longer needed."""
    FORMAT.write(path / META, {"generation": generation, **info.to_json(),
                               "num_keys": num_keys, "files": files.to_json()})
    _collect_garbage(path, files, previous)


def load(path: Path) -> tuple[CacheDir, CacheState]:
    """The current generation of the cache directory `path`, retried while writers replace it."""
    if not (path / META).is_file():
        raise BadInput(f"{path} is not a cache (no {META})",
                       "build one with `Cache.build(store, shots).save(path)`")
    for _ in range(_LOAD_TRIES):
        meta = _read_meta(path)
        try:
            return _read_generation(path, meta)
        except FileNotFoundError as exc:
            if _read_meta(path)["generation"] == meta["generation"]:
                raise CorruptData(f"cache {path} lacks {Path(exc.filename).name}",
                                  "restore or rebuild the cache") from exc
        except (KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptData(f"cannot read cache {path} ({exc!r})",
                              "restore or rebuild the cache") from exc
    raise ConcurrentChange(f"cache {path} keeps changing while it is read",
                           "retry when writes stop")


def _read_generation(path: Path, meta: dict[str, Any]) -> tuple[CacheDir, CacheState]:
    """The arrays of the generation `meta` describes; FileNotFoundError when one is gone."""
    files = Files.from_json(meta["files"])
    segments = []
    for name in files.segments:
        with np.load(path / name) as z:
            segments.append(Segment(z["keys"], z["labels"], z["row_ids"], name))
    text = np.load(path / files.text) if files.text else None
    if not (path / files.index).exists():
        raise FileNotFoundError(path / files.index)
    info = CacheInfo.from_json(meta)
    keys = Keys(tuple(segments))
    if len(segments) > 1 and len(np.unique(keys.row_ids)) != len(keys):
        raise CorruptData(f"cache {path} holds repeated row ids", "rebuild it")
    return CacheDir(path, int(meta["generation"]), files, text), CacheState(info, keys, text)


def _read_meta(path: Path) -> dict[str, Any]:
    """The keys of `cache.json` in `path` (every version up to `FORMAT.version` reads alike)."""
    return FORMAT.read(path / META, "restore or rebuild the cache").body


def _collect_garbage(path: Path, current: Files, previous: Files | None) -> None:
    """Delete the files that neither the current nor the previous generation uses."""
    keep = current.names() | (previous.names() if previous else set())
    for f in path.iterdir():
        if f.name.startswith(_PREFIXES) and f.name not in keep:
            f.unlink(missing_ok=True)
