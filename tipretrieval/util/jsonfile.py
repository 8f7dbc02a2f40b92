"""Versioned JSON documents: one way to read and write the JSON files a tipretrieval directory
is named by (cache.json, classify journal; the store manifest follows the same policy).

Version policy, the same for all: a document records the version of its format; a reader
refuses a newer version with one line ("written by a newer tipretrieval: upgrade"), reads every
older one, and gates compatibility code on the version it read (`Document.version`). Keys a
dataclass does not know are ignored (`known_fields`); a missing required key is CorruptData.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BadInput, CorruptData, NewerFormat
from .atomic import write_json

T = TypeVar("T")


@dataclass(frozen=True)
class DocumentFormat:
    """A kind of JSON document: its name, the version written now, how it records them."""

    name: str  # what the document is, for messages ("classify journal")
    version: int  # the version this tipretrieval writes and the newest it reads
    version_key: str = "version"
    tag: str | None = None  # the value of the document's "format" key, if it has one

    def stamp(self, body: Mapping[str, Any], version: int | None = None) -> dict[str, Any]:
        """`body` with this format's tag and `version` (default: the current one)."""
        head = {"format": self.tag} if self.tag else {}
        return {**head, self.version_key: version or self.version, **body}

    def write(self, path: Path, body: Mapping[str, Any], version: int | None = None) -> None:
        """Atomically replace `path` with `body`, stamped with this format and `version`."""
        write_json(path, self.stamp(body, version))

    def read(self, path: Path, fix: str) -> Document:
        """The document at `path`: CorruptData when unreadable (`fix` says what to do),
        BadInput when it is another kind of document, NewerFormat when written by a newer
        tipretrieval."""
        try:
            obj = json.loads(path.read_text())
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
        body = {k: v for k, v in obj.items() if k not in ("format", self.version_key)}
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
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptData(f"the {self.format.name} {self.path} is invalid ({exc!r})", fix
                              ) from exc


def known_fields(cls: type[T], obj: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `obj` that are fields of the dataclass `cls` (unknown keys ignored)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return {k: v for k, v in obj.items() if k in names}
