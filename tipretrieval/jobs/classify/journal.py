"""The journal of a classify output: the job's identity, its committed parts, resume rules.

Part `i` holds the query rows whose store row id lies in `[i * batch_size, (i + 1) * batch_size)`,
so part boundaries depend only on the input, never on timing. Each part is written to a temporary
file, fsynced and renamed, then `journal.json` (replaced atomically) lists it as committed. A
rerun skips committed parts and rewrites the others, so the finished output holds every query
row exactly once and is byte-identical to an uninterrupted run's.

Nothing is trusted unchecked: the journal carries a sha256 of its own content and of every part
file. A rerun rewrites parts that are missing or damaged; readers refuse them (`CorruptData`).
One job at a time writes a directory: it holds `.classify.lock` while it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ...errors import BadInput, StoreLocked, TipError
from ...util.atomic import atomic_path, fsync_dir, write_json
from ...util.checksum import file_sha256
from ...util.jsonfile import DocumentFormat, known_fields
from .options import ClassifyOptions

log = logging.getLogger(__name__)

JOURNAL = "journal.json"
SUCCESS = "_SUCCESS"
LOCK = ".classify.lock"
LOCK_WAIT_S = 2.0  # a second job into one directory waits this long, then fails


def _digest(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (the job spec's hash; the journal's checksum)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# version 2: checksums of the journal and of every part (version 1 journals are read unchecked)
FORMAT = DocumentFormat("classify journal", 2, version_key="format_version", sealed_from=2,
                        digest=_digest)
_FIX = "classify again with `overwrite=`"


@dataclass(frozen=True)
class JobSpec:
    """The identity of a job: its inputs (with their generations) and its options."""

    cache_id: str
    cache_generation: int
    store_id: str
    store_generation: int
    options: ClassifyOptions

    def digest(self) -> str:
        """A hash of the job parameters, stored in the journal."""
        return _digest(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JobSpec:
        options = ClassifyOptions(**known_fields(ClassifyOptions, obj["options"]))
        return cls(**{**known_fields(cls, obj), "options": options})

    def differences(self, other: JobSpec) -> dict[str, tuple[Any, Any]]:
        """Fields (options flattened) whose values differ, as (self, other)."""
        mine = {**asdict(self), **asdict(self.options)}
        theirs = {**asdict(other), **asdict(other.options)}
        return {k: (v, theirs[k]) for k, v in mine.items() if k != "options" and v != theirs[k]}


@dataclass(frozen=True)
class PartRecord:
    """One committed part: its store row-id range, row count, file, its sha256 and the cache
    generation it was computed with."""

    index: int
    start: int
    stop: int
    rows: int
    file: str
    sha256: str
    cache_generation: int

    def problem(self, out: Path) -> str | None:
        """Why the part file in `out` cannot be used ("missing", "damaged"), or None."""
        path = out / self.file
        if not path.is_file():
            return "missing"
        if not self.sha256:  # a part of a version 1 journal: recorded without a checksum
            return None
        return None if file_sha256(path) == self.sha256 else "damaged (sha256 mismatch)"


@dataclass
class Journal:
    """The state of an output directory: the job, its committed parts and completion."""

    spec: JobSpec
    store_rows: int
    parts: dict[int, PartRecord] = field(default_factory=dict)
    complete: bool = False
    cache_path: str | None = None  # where the cache was last read (not part of the job's identity)

    def to_json(self) -> dict[str, Any]:
        return FORMAT.stamp({
            "state": "complete" if self.complete else "running",
            "spec_hash": self.spec.digest(),
            "spec": self.spec.to_json(),
            "store_rows": self.store_rows,
            "cache_path": self.cache_path,
            "rows": sum(p.rows for p in self.parts.values()),
            "parts": [asdict(self.parts[i]) for i in sorted(self.parts)],
        })

    @classmethod
    def load(cls, out: Path) -> Journal:
        """Read and check `out/journal.json`; TipError when `out` is not a classify output,
        CorruptData when the journal was damaged or edited."""
        path = out / JOURNAL
        if not path.is_file():
            raise TipError(f"{out} has no {JOURNAL}", "it is not a classify output")
        doc = FORMAT.read(path, _FIX)
        unchecked = {"sha256": ""} if doc.version < 2 else {}
        return doc.parse(lambda obj: cls(
            spec=JobSpec.from_json(obj["spec"]),
            store_rows=int(obj["store_rows"]),
            parts={p["index"]: PartRecord(**{**unchecked, **known_fields(PartRecord, p)})
                   for p in obj["parts"]},
            complete=obj["state"] == "complete",
            cache_path=obj.get("cache_path"),
        ), _FIX)

    def damaged(self, out: Path) -> dict[int, str]:
        """The committed parts whose files are missing or damaged: {index: problem}."""
        found = {i: p.problem(out) for i, p in self.parts.items()}
        return {i: problem for i, problem in found.items() if problem}

    def save(self, out: Path) -> None:
        write_json(out / JOURNAL, self.to_json())

    def commit(self, out: Path, record: PartRecord) -> None:
        """Record a part whose file is already durable, then persist the journal."""
        self.parts[record.index] = record
        self.save(out)

    def finish(self, out: Path) -> None:
        """Mark the job complete (journal state and the `_SUCCESS` marker)."""
        self.complete = True
        self.save(out)
        with atomic_path(out / SUCCESS) as tmp:
            tmp.write_text(self.spec.digest() + "\n")


@contextlib.contextmanager
def job_lock(out: Path, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the job lock of the directory `out`; StoreLocked when another job holds it `wait` s."""
    lock = FileLock(str(out / LOCK))
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise StoreLocked(f"another classify job is writing to {out}",
                          "wait until it ends or choose another `out=`") from None
    try:
        yield
    finally:
        lock.release()


def open_job(out: Path, spec: JobSpec, store_rows: int, *, overwrite: bool = False,
             accept_new_generation: bool = False, cache_path: str | None = None) -> Journal:
    """The journal to continue in `out`: new, resumed, or refused when the job differs.

    Call it holding `job_lock(out)`. Parts whose files are missing or damaged are dropped from
    the journal (and their files deleted), so the run writes them again.
    """
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:  # the journal goes first: a kill must not leave it naming deleted parts
        for name in (SUCCESS, JOURNAL):
            (out / name).unlink(missing_ok=True)
        fsync_dir(out)
        _clear(out, keep=set())
    if not (out / JOURNAL).exists():
        if any(p for p in out.iterdir() if not p.name.startswith((".", "_"))):
            raise BadInput(f"{out} exists and is not a classify output",
                           "choose a new output directory (`out=`)")
        journal = Journal(spec=spec, store_rows=store_rows, cache_path=cache_path)
        journal.save(out)
        return journal
    journal = Journal.load(out)
    journal.cache_path = cache_path or journal.cache_path  # saved with the next part
    diffs = journal.spec.differences(spec)
    changed = {k: v for k, v in diffs.items() if not k.endswith("_generation")}
    if "cache_id" in changed:
        was, now = changed["cache_id"]
        raise BadInput(f"{out} holds a classify job over another cache (cache id {was}, now "
                       f"{now}: rebuilt or replaced)", "use a new `out=` or pass `overwrite=`")
    if changed:
        raise BadInput(f"{out} holds a classify job with other parameters ({_listed(changed)})",
                       "use a new `out=` or pass `overwrite=`")
    if diffs and journal.complete:
        raise BadInput(f"{out} holds a finished job over older inputs ({_listed(diffs)})",
                       "use a new `out=` or pass `overwrite=` to classify the current data")
    if diffs and not accept_new_generation:
        raise BadInput(f"the inputs changed since this job started ({_listed(diffs)})",
                       "pass `accept_new_generation=` to finish with the current data, or "
                       "`overwrite=`")
    if diffs:
        journal = _adopt(journal, spec, store_rows)
        journal.save(out)
    damaged = journal.damaged(out)
    if damaged:
        journal = _drop(out, journal, damaged)
    _clear(out, keep={p.file for p in journal.parts.values()})
    return journal


def _drop(out: Path, journal: Journal, damaged: dict[int, str]) -> Journal:
    """The journal without the `damaged` parts, saved (not complete) before files go."""
    for i, problem in sorted(damaged.items()):
        log.warning("%s is %s: classifying its rows again", out / journal.parts[i].file, problem)
    (out / SUCCESS).unlink(missing_ok=True)
    parts = {i: p for i, p in journal.parts.items() if i not in damaged}
    journal = replace(journal, parts=parts, complete=False)
    journal.save(out)
    return journal


def _listed(diffs: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diffs.items())


def _adopt(journal: Journal, spec: JobSpec, store_rows: int) -> Journal:
    """Continue under new generations; a part cut short by the old store end is redone."""
    log.warning("continuing %s under new input generations", spec.digest()[:12])
    parts = {i: p for i, p in journal.parts.items()
             if p.stop < journal.store_rows or journal.store_rows == store_rows}
    return replace(journal, spec=spec, store_rows=store_rows, parts=parts, complete=False)


def _clear(out: Path, keep: set[str]) -> None:
    """Remove part files not listed in `keep` and temporary files left by a killed run."""
    for path in out.iterdir():
        stale = path.name.startswith("part-") and path.name not in keep
        if stale or (path.name.startswith(".") and path.name.endswith(".tmp")):
            path.unlink()


