"""Worker processes that fill tasks into a ring of shared-memory slots, answering in order.

h5py runs every HDF5 call under one lock (holding the GIL), and HDF5's fletcher32 check makes
a reading process CPU-bound, so threads cannot read shards in parallel; processes can, each
opening the shard files read-only. The caller is never forked (it may run torch/FAISS/OpenMP or
reader threads, whose locks a fork would copy held) and multiprocessing's spawn/forkserver are
not used (they import the caller's `__main__` again): one fresh interpreter is started with
`subprocess` in a session of its own, imports the filling code once (unpickling the `fill`
sent to it), and forks the other workers from itself (single-threaded: BLAS/OpenMP threads are
off in it), so a pool costs one interpreter start-up, not one per worker.
The ring is one anonymous shared-memory file (memfd: it has no name, so nothing is ever left in
/dev/shm, even when a process is killed) of `slots` slots. A caller takes a free slot, may fill
it itself (a writer's input), and submits a task with it; task k goes to worker k % count, and
each worker answers its tasks in order with what `fill` returned, so `take()` returns them in
submit order. A taken slot is free again unless it is lent: the arrays of a batch handed out
without a copy keep their slot until they are garbage. Workers ignore Ctrl-C, are killed
together when the consumer stops (early, on an error or at the end) and exit when their
connection closes (the consumer died).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import mmap
import os
import signal
import socket
import subprocess
import sys
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import TipError

DEPTH = 2  # slots per worker by default: one filled by the worker while the other is used
SUPPORTED = hasattr(os, "memfd_create") and hasattr(os, "fork")  # else: read in-process
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding this tipretrieval
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from tipretrieval.store.workers import "
         "serve; serve(int(sys.argv[2]), [int(fd) for fd in sys.argv[3:]])")
_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        # glibc keeps freed HDF5 chunk buffers (4 MB) for reuse: with its default, adaptive
        # thresholds a worker (which allocates no batch arrays) gave them back and faulted
        # every page in again for each chunk, which tripled its CPU time
        "MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}

Fill = Callable[[Any, memoryview], Any]
READER_DIED = ("a store reader worker process stopped unexpectedly",
               "rerun with `workers=0` to read in this process and see the error")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def serve(ring_fd: int, sock_fds: list[int]) -> None:
    """The workers' start: receive `(fill, slot_bytes)` on the first connection (unpickling
    `fill` imports its code), fork a worker for each other connection, and work on the first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the consumer handles Ctrl-C and ends us
    view = memoryview(mmap.mmap(ring_fd, 0))
    os.close(ring_fd)
    conns = [Connection(fd) for fd in sock_fds]
    start = _attempt(conns[0].recv)
    mine, forked = conns[0], False
    for conn in conns[1:]:
        if os.fork() == 0:
            mine, forked = conn, True
            break
    for conn in conns:
        if conn is not mine:
            conn.close()
    _work(mine, view, *start)
    if forked:
        os._exit(0)  # a forked worker ends here, without the interpreter's exit handlers


def _work(conn: Connection, view: memoryview, answer: tuple | None, start: Any) -> None:
    """One worker: answer how it started, then run `fill(task, slot)` for each `(slot, task)`
    received, answering each with (None, what it returned) or (the error, None), until the
    consumer closes the connection."""
    try:
        conn.send((answer, None))
        if answer is None:
            fill, slot_bytes = start
            while True:
                slot, task = conn.recv()
                part = view[slot * slot_bytes:(slot + 1) * slot_bytes]
                conn.send(_attempt(functools.partial(fill, task, part)))
    except (EOFError, OSError):
        pass  # the consumer closed the connection: stop


def _attempt(step: Callable[[], Any]) -> tuple[tuple | None, Any]:
    """(None, `step()`), or (the error as an answer, None) when it raises: a TipError as its
    class, problem and hint (picklable); anything else (a bug) as one line of text."""
    try:
        return None, step()
    except TipError as exc:
        return (type(exc), exc.problem, exc.hint), None
    except Exception as exc:  # noqa: BLE001 (reported to the consumer, not hidden)
        return (None, _one_line(exc), None), None


class Pool:
    """`count` worker processes running `fill(task, slot)` (a picklable callable, sent once)
    on `slots` slots of `slot_bytes` (default `count * DEPTH`); a slot is free, pending (its
    task submitted and not yet taken) or lent (see `lend`). `died`: the problem and hint of
    the one-line error raised when a worker stops unexpectedly (the owner's words)."""

    def __init__(self, count: int, fill: Fill, slot_bytes: int, slots: int | None = None,
                 died: tuple[str, str] = READER_DIED):
        self.slots = slots or count * DEPTH
        self._died = died
        self._slot_bytes = slot_bytes
        self._proc: subprocess.Popen | None = None
        self._conns: list[Connection] = []
        self._started = [False] * count
        self._submitted = 0
        self._pending: collections.deque[int] = collections.deque()  # slots, in submit order
        self._lent: dict[int, list[weakref.ref]] = {}
        fd = os.memfd_create("tipretrieval-ring", os.MFD_CLOEXEC)
        pairs = [socket.socketpair() for _ in range(count)]
        try:
            os.ftruncate(fd, self.slots * slot_bytes)
            self._ring = mmap.mmap(fd, self.slots * slot_bytes)
            self._view = memoryview(self._ring)  # (set together: close() releases both)
            theirs = [str(b.fileno()) for _, b in pairs]
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _ROOT, str(fd), *theirs],
                pass_fds=(fd, *map(int, theirs)), stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **_ENV})
            self._conns = [Connection(a.detach()) for a, _ in pairs]
            self._conns[0].send((fill, slot_bytes))
        except BaseException:
            self.close()
            raise
        finally:
            os.close(fd)
            for a, b in pairs:
                a.close()
                b.close()

    def ready(self) -> bool:
        """Whether every worker has started (without waiting): until then a caller may do the
        work itself rather than wait."""
        return all(self._start_answer(i, wait=False) for i in range(len(self._conns)))

    def _start_answer(self, i: int, wait: bool) -> bool:
        """Whether worker `i` has started, receiving its start-up answer when `wait` or when
        it is there; raises the error it started with."""
        if not self._started[i] and (wait or self._conns[i].poll()):
            self._answer(i)
            self._started[i] = True
        return self._started[i]

    def _answer(self, i: int) -> Any:
        """Worker `i`'s next answer: what its `fill` returned; raises the error it reports."""
        try:
            error, value = self._conns[i].recv()
        except (EOFError, OSError) as exc:
            raise TipError(*self._died) from exc
        if error is not None:
            kind, problem, hint = error
            raise RuntimeError(f"a store worker process failed: {problem}") if kind is None \
                else kind(problem, hint)
        return value

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet taken."""
        return len(self._pending)

    def free_slot(self) -> int | None:
        """A slot neither pending nor lent (the lowest), or None when there is none."""
        for slot, refs in list(self._lent.items()):
            if all(ref() is None for ref in refs):
                del self._lent[slot]
        busy = set(self._pending) | set(self._lent)
        return next((s for s in range(self.slots) if s not in busy), None)

    def slot(self, slot: int) -> memoryview:
        """The memory of `slot` (to fill before submitting, or to read once taken)."""
        return self._view[slot * self._slot_bytes:(slot + 1) * self._slot_bytes]

    def submit(self, task: Any, slot: int) -> None:
        """Send `task` with the free `slot` to the next worker."""
        assert slot not in self._pending and slot not in self._lent, f"slot {slot} is busy"
        try:
            self._conns[self._submitted % len(self._conns)].send((slot, task))
        except OSError as exc:
            raise TipError(*self._died) from exc
        self._submitted += 1
        self._pending.append(slot)

    def take(self) -> tuple[int, Any]:
        """The slot of the oldest pending task and what `fill` returned for it, once its
        worker is done; raises the worker's error (the same TipError as in-process). The slot
        is free again (until `lend`)."""
        worker = (self._submitted - len(self._pending)) % len(self._conns)
        self._start_answer(worker, wait=True)
        slot = self._pending.popleft()
        return slot, self._answer(worker)

    def done(self) -> bool:
        """Whether the oldest pending task is done (its answer there; without waiting)."""
        worker = (self._submitted - len(self._pending)) % len(self._conns)
        return self._start_answer(worker, wait=False) and self._conns[worker].poll()

    def lend(self, slot: int, *arrays: Any) -> None:
        """Keep `slot` busy until every one of `arrays` (views of it) is garbage."""
        self._lent[slot] = [weakref.ref(a) for a in arrays]

    def close(self) -> None:
        """Stop the workers and free the ring. Workers are killed at once (their whole
        session) rather than waited for (one may be starting or filling a slot): a caller that
        needs a task's result takes it first. Lent slots stay valid: the ring is unmapped when
        the last of them is garbage."""
        for conn in self._conns:
            conn.close()
        self._conns = []
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None
        if hasattr(self, "_view"):
            self._view.release()
            with contextlib.suppress(BufferError):  # a slot still referenced: freed with it
                self._ring.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
