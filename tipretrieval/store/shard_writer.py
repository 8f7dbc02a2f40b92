"""Where a staged append's shard is written: in this process, or in a writer process.

h5py holds the GIL through every HDF5 call, so while a thread writes a shard (HDF5's write and
its fletcher32 checksums) no other thread of the process runs Python: the dump import's
preparing of the next chunk (reading, ids, labels) waited for it. `WriterProcess` runs
`write_data` (the one code path `Store.write` runs too) in a worker process (`workers.Pool`)
instead. The chunk's features are already in a slot of the pool's shared memory (the import
reads and normalises them there, see `dumps._Ring`); the rest of the task (the other columns,
the id hashes, the shard's name) is pickled into the slot after them as `shard.ShardData`, the
ids and sources as UTF-8 bytes end to end with their end offsets, as the shard stores them (an
object array of 131,072 strings took 55 ms to pickle and 35 ms to unpickle, and turning the
bytes back into strings for `write_shard` 36 ms a shard in the worker). The worker builds every
shard in one `FileImage` it keeps (hashed in memory and saved around the page cache, see
`shard._write_file`): with the shard written through the page cache and hashed back from it,
the worker and that hashing were the import's slowest side. An OSError in the worker (a full
disk) comes back as a value and is raised as `Store.abandon`'s one-line error, exactly as
in-process, and a worker that died is one line too; the worker asks the kernel to kill it with
the importing process, so a killed import leaves no shard being written behind it. Both writers
answer `take` in submit order.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import TipError
from ..util.file_image import FileImage
from .manifest import ShardInfo
from .shard import ShardData, write_data
from .store import Staged, Store
from .workers import Pool

_PR_SET_PDEATHSIG = 1
TASK_BYTES = 256  # room in a slot per row, after the features, for the rest of its task
_libc = ctypes.CDLL(None, use_errno=True)


class InProcess:
    """Writes each staged shard when it is submitted (`Store.write`), keeping its outcome for
    `take`; `buffers` are `count` plain arrays of `nbytes` for the chunks' features."""

    def __init__(self, store: Store, count: int, nbytes: int):
        self._store = store
        self.buffers = [np.empty(nbytes, np.uint8) for _ in range(count)]
        self._done: deque[ShardInfo | TipError] = deque()

    def submit(self, staged: Staged, slot: int | None) -> None:
        try:
            self._done.append(self._store.write(staged))
        except TipError as exc:
            self._done.append(exc)

    def take(self, staged: Staged) -> ShardInfo:
        """The shard of the oldest submitted append (`staged`); raises its write's error."""
        done = self._done.popleft()
        if isinstance(done, TipError):
            raise done
        return done

    def close(self) -> None:
        self._done.clear()


@dataclass(frozen=True)
class _Task:
    """A shard to write: its data but the features, which are in the worker's slot (`shape`,
    in the data's dtype); `parent`: the importing process."""

    path: Path
    first_row_id: int
    data: ShardData
    shape: tuple[int, int]
    dtype: str
    parent: int

    @classmethod
    def of(cls, staged: Staged) -> _Task:
        assert staged.rows.views is None, "the writer process writes rows without views"
        data = ShardData.of(staged.rows, staged.keys, staged.dtype)
        return cls(staged.path, staged.first_row_id, replace(data, features=None),
                   data.features.shape, staged.dtype, os.getpid())

    def shard(self, slot: memoryview) -> ShardData:
        """The shard's data with its features from `slot`."""
        n, dim = self.shape
        features = np.frombuffer(slot, self.dtype, n * dim).reshape(n, dim)
        return replace(self.data, features=features)


@dataclass(frozen=True)
class _InSlot:
    """A task pickled into its slot after the features, `size` bytes from `start`."""

    start: int
    size: int


_image: FileImage | None = None  # the worker's, reused for every shard it writes


def _write(task: _Task | _InSlot, slot: memoryview) -> ShardInfo | OSError:
    """In the worker: write the shard of `task`; an OSError is returned (pickled with its
    errno and text) for the importing process to raise."""
    global _image
    if isinstance(task, _InSlot):
        task = pickle.loads(slot[task.start:task.start + task.size])
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0 and os.getppid() != task.parent:
        os._exit(1)  # the importer died before the kernel could be asked to kill us with it
    if _image is None:
        _image = FileImage(len(slot))
    try:
        return write_data(task.path, task.shard(slot), task.first_row_id, _image)
    except OSError as exc:
        return exc


class WriterProcess:
    """Writes staged shards of up to `rows` rows in one worker process; `buffers` are the
    first `nbytes` of the pool's `count` slots: the features of an append submitted with slot
    i must be in buffer i. The rest of a slot holds the task, pickled (TASK_BYTES a row): the
    pool's connection buffers about 200 KB, and a task sent through it that is bigger blocks
    `submit` until the worker has written the shard before (which undid the overlap)."""

    def __init__(self, store: Store, count: int, nbytes: int, rows: int):
        self._store = store
        self._features = nbytes
        self._pool = Pool(1, _write, nbytes + rows * TASK_BYTES, slots=count, died=(
            "the import's writer process stopped unexpectedly (killed, or out of memory?)",
            "rerun the import: it continues where it stopped"))
        self.buffers = [self._pool.slot(i)[:nbytes] for i in range(count)]

    def submit(self, staged: Staged, slot: int | None) -> None:
        features = staged.rows.features
        assert slot is not None and np.frombuffer(self.buffers[slot], features.dtype).ctypes \
            .data == features.ctypes.data, "the features must be in the slot"
        task: _Task | _InSlot = _Task.of(staged)
        blob = pickle.dumps(task, pickle.HIGHEST_PROTOCOL)
        memory = self._pool.slot(slot)
        if len(blob) <= len(memory) - self._features:  # (else sent, and submit may wait)
            memory[self._features:self._features + len(blob)] = blob
            task = _InSlot(self._features, len(blob))
        self._pool.submit(task, slot)

    def take(self, staged: Staged) -> ShardInfo:
        """The shard of the oldest submitted append (`staged`); raises its write's error (a
        worker's TipError as it is, an OSError as `Store.abandon`'s)."""
        _, done = self._pool.take()
        if isinstance(done, OSError):
            raise self._store.abandon(staged, done) from done
        return done

    def close(self) -> None:
        self._pool.close()
