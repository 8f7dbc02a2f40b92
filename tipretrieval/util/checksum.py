"""File checksums, streamed so that large shards and checkpoints never sit in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def file_sha256(file: Path | str | BinaryIO) -> str:
    """Hex sha256 of a file, given by path or as a binary file open at its start (read to its
    end, e.g. in a thread while another holds the path)."""
    if isinstance(file, (str, Path)):
        with open(file, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    return hashlib.file_digest(file, "sha256").hexdigest()
