"""The cache directory format: generations named by one atomically replaced `cache.json`.

`cache.json` names the current generation and is replaced last. It lists immutable key segments
(`keys-g<N>-<i>.npz`: keys, labels, row ids), the text classifier (`text-g<N>.npy`), the GDA
statistics (`gda-g<N>.npz`: class sums, counts, scatter) and the FAISS index
(`index-g<N>.faiss`) plus how many segments that index already holds. Adding shots writes one
small segment and a new JSON, so a cache of a million keys grows without rewriting
its keys or index; segments are merged once the deltas grow past `COMPACT_FRACTION`. A reader
that loaded generation g keeps working while g+1 is written: files of the previous generation
are kept, older ones deleted. Writers hold `.cache.lock` (StoreLocked after 60 s); readers
retry while a writer moves on. `CacheDir` is one generation and the files it lists: `save`
writes only what a `CacheState` does not share with it.

Version 2 records the sha256 of every file (`files.sha256`): segments and text are checked on
load, the index when it is first loaded (exact mode never needs it). A failed save removes the
files it wrote (and the directory, if it made it); an OSError is one line (TipError).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from ..errors import BadInput, ConcurrentChange, CorruptData, StoreLocked, TipError
from ..method.gda import GDAStats
from ..method.index import KeyIndex
from ..util.atomic import atomic_path
from ..util.checksum import file_sha256
from ..util.jsonfile import Document, DocumentFormat
from .state import CacheInfo, CacheState, Keys, Segment

FORMAT = DocumentFormat("cache", 2, tag="tipretrieval-cache")  # cache.json; 2: sha256 of files
META = "cache.json"
LOCK_NAME = ".cache.lock"
LOCK_TIMEOUT = 60.0  # seconds a writer waits for another writer, as for a store
_PREFIXES = ("keys-g", "text-g", "index-g", "gda-g")
_LOAD_TRIES = 5
_FIX = "restore or rebuild the cache"


@dataclass(frozen=True)
class Files:
    """The files of one generation, as `cache.json` lists them."""

    segments: list[str]
    text: str | None
    index: str
    index_segments: int  # how many leading segments `index` holds
    sha256: dict[str, str]  # of every file (empty in a version 1 cache: not checked)
    gda: str | None = None  # the GDA statistics file

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any], version: int = FORMAT.version) -> Files:
        """The files `obj` lists; TypeError or ValueError when it is malformed."""
        files = cls(list(obj["segments"]), obj.get("text"), obj["index"],
                    int(obj["index_segments"]), dict(obj.get("sha256", {})),
                    obj.get("gda"))
        names = files.names()
        if not all(isinstance(n, str) and "/" not in n for n in names):
            raise ValueError(f"bad file names {sorted(map(str, names))}")
        if version >= 2 and names != set(files.sha256):  # e.g. a file name edited or dropped
            raise ValueError(f"files {sorted(names)} but sha256 of {sorted(files.sha256)}")
        return files

    def names(self) -> set[str]:
        return {*self.segments, self.index, *(f for f in (self.text, self.gda) if f)}

    def checked(self, directory: Path, name: str) -> Path:
        """The path of file `name`; CorruptData when its sha256 is not the recorded one."""
        path = directory / name
        if name in self.sha256 and file_sha256(path) != self.sha256[name]:
            raise CorruptData(f"cache {directory} has a damaged {name} (sha256 mismatch)", _FIX)
        return path


@dataclass(frozen=True, eq=False)
class CacheDir:
    """A cache directory at one generation: the files it lists and the text array it holds."""

    path: Path
    generation: int
    files: Files
    text: np.ndarray | None  # the array in `files.text` (identity tells an unchanged classifier)
    gda: GDAStats | None = None  # the statistics in `files.gda` (identity: unchanged)

    def holds_index_of(self, keys: Keys) -> bool:
        """Whether this generation's index file holds the leading segments of `keys`."""
        n = self.files.index_segments
        return n <= len(keys.segments) and \
            [s.file for s in keys.segments[:n]] == self.files.segments[:n]

    def load_index(self, keys: Keys) -> KeyIndex:
        """This generation's index plus the segments of `keys` added after it was written."""
        path = self.path / self.files.index
        if not path.is_file():
            if _read_meta(self.path)["generation"] != self.generation:
                raise ConcurrentChange(f"cache {self.path} moved on two generations past the "
                                       f"one loaded (g{self.generation})", "load it again")
            raise CorruptData(f"cache {self.path} lacks {self.files.index}", _FIX)
        index = KeyIndex.load(self.files.checked(self.path, self.files.index))
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
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        with lock(target):
            gen, previous = next_generation(target, base.generation if base else None)
            try:
                directory, keys = _write(target, gen, state, index, base)
            except BaseException:
                _remove_generation(target, gen)  # not committed: nothing refers to its files
                raise
            commit(target, gen, state.info, len(keys), directory.files, previous)
            return directory, keys
    except OSError as exc:
        raise TipError(f"cannot write cache {target}: {exc.strerror or exc}"
                       f"{f' ({exc.filename})' if exc.filename else ''}",
                       "fix that and retry (the cache is unchanged)") from exc
    finally:
        if created and not (target / META).exists():
            _remove_new_dir(target)


def _write(target: Path, gen: int, state: CacheState, index: Callable[[], KeyIndex],
           base: CacheDir | None) -> tuple[CacheDir, Keys]:
    """Write the files of generation `gen` of `target` (holding its lock), not committed."""
    if base is not None:
        lost = sorted(n for n in base.files.names() if not (target / n).is_file())
        if lost:
            raise CorruptData(f"cache {target} lacks {', '.join(lost)}", _FIX)
    keys = state.keys if base is not None else state.keys.unsaved()
    if keys.needs_compaction():
        keys = keys.whole()
    keys = Keys(tuple(s if s.file is not None else write_segment(target, gen, i, s)
                      for i, s in enumerate(keys.segments)))
    text = _file_of(state.text, None if base is None else (base.text, base.files.text),
                    lambda value: write_text(target, gen, value))
    gda = _file_of(state.gda, None if base is None else (base.gda, base.files.gda),
                   lambda value: write_gda(target, gen, value))
    if base is not None and base.holds_index_of(keys):
        index_file, covered = base.files.index, base.files.index_segments
    else:
        index_file, covered = index_name(gen), len(keys.segments)
        index().save(target / index_file)
    known = base.files.sha256 if base is not None else {}
    names = [s.file for s in keys.segments] + [index_file] + [n for n in (text, gda) if n]
    sha256 = {n: known.get(n) or file_sha256(target / n) for n in names}
    files = Files([s.file for s in keys.segments], text, index_file, covered, sha256, gda)
    return CacheDir(target, gen, files, state.text, state.gda), keys


def _file_of(value: Any, saved: tuple[Any, str | None] | None,
             write: Callable[[Any], str]) -> str | None:
    """The file holding `value`: none for None, the base generation's file when `value` is the
    very object it saved (`saved` = (object, file)), else a newly written one."""
    if value is None:
        return None
    if saved is not None and value is saved[0]:
        return saved[1]
    return write(value)


def _remove_generation(path: Path, generation: int) -> None:
    """Delete the files of the uncommitted `generation` (a failed save's)."""
    for f in path.iterdir():
        if re.fullmatch(rf"(keys|text|index|gda)-g{generation}(-\d+)?\.[a-z]+", f.name):
            f.unlink(missing_ok=True)


def _remove_new_dir(path: Path) -> None:
    """Remove the directory a failed first save made: its lock file, then it if empty."""
    try:
        (path / LOCK_NAME).unlink(missing_ok=True)
        path.rmdir()
    except OSError:
        pass  # not empty (another writer's files) or gone: leave it


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


def write_gda(path: Path, generation: int, stats: GDAStats) -> str:
    """Save the GDA statistics of `generation`; returns the file name."""
    name = f"gda-g{generation}.npz"
    with atomic_path(path / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, sums=stats.sums, counts=stats.counts, scatter=stats.scatter)
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
    return meta["generation"] + 1, Files.from_json(meta["files"], 1)


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
        doc = _read_doc(path)
        try:
            return _read_generation(path, doc)
        except (FileNotFoundError, CorruptData) as exc:
            if _read_doc(path).body != doc.body:
                continue  # a writer replaced the generation while it was read
            if isinstance(exc, CorruptData):
                raise
            name = Path(exc.filename).name if exc.filename else exc
            raise CorruptData(f"cache {path} lacks {name}", _FIX) from exc
        except (KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptData(f"cannot read cache {path} ({exc!r})", _FIX) from exc
    raise ConcurrentChange(f"cache {path} keeps changing while it is read",
                           "retry when writes stop")


def _read_generation(path: Path, doc: Document) -> tuple[CacheDir, CacheState]:
    """The arrays of the generation `doc` describes, each file checked against its sha256;
    FileNotFoundError when one is gone. The index is checked when it is first loaded."""
    meta = doc.body
    files = Files.from_json(meta["files"], doc.version)
    segments = []
    for name in files.segments:
        with np.load(files.checked(path, name)) as z:
            segments.append(Segment(z["keys"], z["labels"], z["row_ids"], name))
    text = np.load(files.checked(path, files.text)) if files.text else None
    gda = None
    if files.gda:
        with np.load(files.checked(path, files.gda)) as z:
            gda = GDAStats(z["sums"], z["counts"], z["scatter"])
    try:
        info = CacheInfo.from_json(meta)
        state = CacheState(info, Keys(tuple(segments)), text, gda).checked()
    except BadInput as exc:
        raise CorruptData(f"cache {path / META} is invalid: {exc.problem}", _FIX) from exc
    return CacheDir(path, int(meta["generation"]), files, text, gda), state


def _read_doc(path: Path) -> Document:
    """`cache.json` of `path` as read (every version up to `FORMAT.version` reads alike)."""
    return FORMAT.read(path / META, _FIX)


def _read_meta(path: Path) -> dict[str, Any]:
    """The keys of `cache.json` in `path`."""
    return _read_doc(path).body


def _collect_garbage(path: Path, current: Files, previous: Files | None) -> None:
    """Delete the files that neither the current nor the previous generation uses."""
    keep = current.names() | (previous.names() if previous else set())
    for f in path.iterdir():
        if f.name.startswith(_PREFIXES) and f.name not in keep:
            f.unlink(missing_ok=True)
