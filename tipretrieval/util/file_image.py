"""A file built in memory, checksummed there, and written to disk in one pass around the page cache.

Writing a shard through the page cache cost the kernel more CPU than HDF5's own work (copying
every byte into newly allocated cache pages: 0.6-2 CPU s per GB on a 2-CPU VM, against 0.05 s
with O_DIRECT), and reading it back to checksum it cost a second pass over the disk. A file
built in a `FileImage` (h5py's file-object driver writes into it) is hashed in memory and saved
with O_DIRECT from the image's page-aligned buffer, which a writer can reuse for every file.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

from .checksum import DIGESTS, SHARD_DIGEST

ALIGN = 4096  # O_DIRECT transfers: whole blocks from page-aligned memory
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere files are saved with plain writes


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class FileImage:
    """A seekable binary file in a page-aligned anonymous memory map that grows as it is
    written (what h5py's file-object driver needs: read, write, seek, tell, truncate, flush);
    `reset` empties it for the next file while keeping its memory."""

    def __init__(self, capacity: int = 1 << 20):
        self._map = mmap.mmap(-1, _aligned(max(capacity, 1)))
        self._pos = self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def reset(self) -> None:
        self._pos = self._size = 0

    def close(self) -> None:
        """Free the memory (the image cannot be used after)."""
        self._map.close()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        """Nothing to do: the image is saved whole by `save`."""

    def _room(self, end: int) -> None:
        """Grow the map (keeping the file's bytes) to hold `end` bytes."""
        if end > len(self._map):
            grown = mmap.mmap(-1, _aligned(max(end, 2 * len(self._map))))
            grown[:self._size] = self._map[:self._size]
            self._map.close()
            self._map = grown

    def _extend(self, end: int) -> None:
        """Make the file `end` bytes long if it is shorter, the new bytes zero (a reused map
        holds an earlier file's bytes)."""
        if end > self._size:
            self._room(end)
            self._map[self._size:end] = bytes(end - self._size)
            self._size = end

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self._extend(self._pos)  # a gap before the data reads as zeros
        self._room(self._pos + n)
        self._map[self._pos:self._pos + n] = data
        self._pos += n
        self._size = max(self._size, self._pos)
        return n

    def readinto(self, buf) -> int:
        out = memoryview(buf).cast("B")
        n = max(0, min(len(out), self._size - self._pos))
        out[:n] = self._map[self._pos:self._pos + n]
        self._pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        end = self._size if n < 0 else min(self._size, self._pos + n)
        data = self._map[self._pos:max(end, self._pos)]
        self._pos += len(data)
        return data

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self._extend(size)
        self._size = size
        return size

    def digest(self, algorithm: str = SHARD_DIGEST) -> str:
        """"<algorithm>:<hex>" of the file's bytes, as `checksum.file_digest` gives for the
        saved file."""
        with memoryview(self._map) as view, view[:self._size] as data:
            return f"{algorithm}:{DIGESTS[algorithm](data).hexdigest()}"

    def save(self, path: Path | str) -> None:
        """Write the image to the file at `path` (made, or its contents replaced; not
        fsynced): whole blocks with O_DIRECT, then cut to size, where the file system takes
        O_DIRECT, else with a plain write. A full disk is an OSError (ENOSPC)."""
        size, end = self._size, _aligned(self._size)
        self._extend(end)  # zero the last block's tail
        try:  # (views released even when an error's traceback keeps them: the map can close)
            with memoryview(self._map) as view, view[:end] as blocks, view[:size] as data:
                if not (_O_DIRECT and _save_direct(path, blocks, size)):
                    with open(path, "wb") as f:
                        f.write(data)
        except OSError as exc:
            if exc.filename is None:  # (as from os.open: the error names the file)
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
        finally:
            self._size = size


def _save_direct(path: Path | str, blocks: memoryview, size: int) -> bool:
    """Write `blocks` to `path` with O_DIRECT and cut the file to `size`; False where the file
    system refuses O_DIRECT (EINVAL: tmpfs, some network file systems)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o666)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    try:
        at = 0
        while at < len(blocks):
            with blocks[at:] as rest:
                at += os.pwrite(fd, rest, at)
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno == errno.EINVAL and at == 0:
            return False
        raise
    finally:
        os.close(fd)
    return True
