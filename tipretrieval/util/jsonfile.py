"""Versioned JSON documents: one way to read and write the JSON files a tipretrieval directory
is named by (the store manifest, cache.json, the classify journal).

Version policy, the same for all: a document records the version of its format; a reader
refuses a newer version with one line ("written by a newer tipretrieval: upgrade"), reads every
older one, and gates compatibility code on the version it read (`Document.version`). Keys a
dataclass does not know are ignored (`known_fields`); a missing required key is CorruptData.
A format may seal its documents from a given version on with a "checksum" key (a sha256 of
the rest: `content_sha256`, or the format's own `digest`); a reader refuses a document of such
a version that fails it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BadInput, CorruptData, NewerFormat
from .atomic import json_text, write_text

T = TypeVar("T")
CHECKSUM = "checksum"


def content_sha256(obj: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, compact, UTF-8) of `obj` but its checksum."""
    body = {k: v for k, v in obj.items() if k != CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class DocumentFormat:
    """A kind of JSON document: its name, the version written now, how it records them."""

    name: str  # what the document is, for messages ("classify journal")
    version: int  # the version this tipretrieval writes and the newest it reads
    version_key: str = "version"
    tag: str | None = None  # the value of the document's "format" key, if it has one
    sealed_from: int | None = None  # the first version whose documents carry a checksum
    digest: Callable[[dict[str, Any]], str] = content_sha256  # the checksum of the rest
    dump: Callable[[dict[str, Any]], str] = json_text  # a stamped document as text

    def stamp(self, body: Mapping[str, Any], version: int | None = None) -> dict[str, Any]:
        """`body` with this format's tag and `version` (default: the current one), and its
        checksum when documents of that version are sealed."""
        head = {"format": self.tag} if self.tag else {}
        doc = {**head, self.version_key: version or self.version, **body}
        if self._sealed(doc[self.version_key]):
            doc[CHECKSUM] = self._checksum(doc)
        return doc

    def write(self, path: Path, body: Mapping[str, Any], version: int | None = None) -> None:
        """Atomically replace `path` with `body`, stamped with this format and `version`."""
        write_text(path, self.dump(self.stamp(body, version)))

    def _sealed(self, version: int) -> bool:
        return self.sealed_from is not None and version >= self.sealed_from

    def _checksum(self, doc: Mapping[str, Any]) -> str:
        return self.digest({k: v for k, v in doc.items() if k != CHECKSUM})

    def read(self, path: Path, fix: str) -> Document:
        """The document at `path`: CorruptData when unreadable (`fix` says what to do),
        BadInput when it is another kind of document, NewerFormat when written by a newer
        tipretrieval."""
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            version = int(obj[self.version_key])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptData(f"the {self.name} {path} is unreadable ({exc})", fix) from exc
        if self.tag is not None and obj.get("format") != self.tag:
            raise BadInput(f"{path} is not a {self.name} (format {obj.get('format')!r})",
                           "check the path")
        if version > self.version:
            raise NewerFormat(f"{path} was written by a newer tipretrieval ({self.name} "
                              f"v{version}; this one reads up to v{self.version})",
                              "upgrade tipretrieval")
        if self._sealed(version) and obj.get(CHECKSUM) != self._checksum(obj):
            raise CorruptData(f"the {self.name} {path} fails its checksum (damaged or edited "
                              "by hand)", fix)
        head = {"format", self.version_key} | ({CHECKSUM} if self.sealed_from else set())
        body = {k: v for k, v in obj.items() if k not in head}
        return Document(self, path, version, body)


@dataclass(frozen=True)
class Document:
    """A document as read: its format, where it came from, its version and its other keys."""

    format: DocumentFormat
    path: Path
    version: int
    body: dict[str, Any]

    def parse(self, build: Any, fix: str) -> Any:
        """`build(body)`; a missing key or a bad value is CorruptData naming the file."""
        try:
            return build(self.body)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise CorruptData(f"the {self.format.name} {self.path} is invalid ({exc!r})", fix
                              ) from exc


def known_fields(cls: type[T], obj: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `obj` that are fields of the dataclass `cls` (unknown keys ignored)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return {k: v for k, v in obj.items() if k in names}
