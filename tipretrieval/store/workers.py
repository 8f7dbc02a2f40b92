"""Worker processes that fill tasks into a ring of shared-memory slots, answering in order.

h5py runs every HDF5 call under one lock (holding the GIL), and HDF5's fletcher32 check makes
a reading process CPU-bound, so threads cannot read shards in parallel; processes can, each
opening the shard files read-only. Workers are fresh interpreters started with `subprocess`:
not forked (the caller may run torch/FAISS/OpenMP or reader threads, whose locks a fork copies
held) and not multiprocessing's spawn/forkserver (which import the caller's `__main__` again).
The ring is one anonymous shared-memory file (memfd: it has no name, so nothing is ever left in
/dev/shm, even when a process is killed) of `DEPTH` slots per worker. Task k goes to worker
k % count and slot k % slots; each worker answers its tasks in order, so `take()` returns the
slots in submit order. A worker ignores Ctrl-C, is killed when the consumer stops (early, on an
error or at the end) and exits when its connection closes (the consumer died): none is left.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import TipError

DEPTH = 2  # slots per worker: one filled by the worker while the consumer copies the other
SUPPORTED = hasattr(os, "memfd_create")  # elsewhere callers read in-process
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding this tipretrieval
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from tipretrieval.store.workers import serve; serve(int(sys.argv[2]), int(sys.argv[3]))")
_DIED_SECONDS = 10.0  # how long a worker whose connection broke is given to exit

Fill = Callable[[Any, memoryview], None]


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def serve(sock_fd: int, ring_fd: int) -> None:
    """A worker's life: receive `(fill, slot_bytes)` and answer when started, then run
    `fill(task, slot)` for each `(slot, task)` received, answering each; return when the
    consumer closes the connection. Answers are None, or the error for the consumer to raise."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the consumer handles Ctrl-C and closes us
    conn = Connection(sock_fd)
    view = memoryview(mmap.mmap(ring_fd, 0))
    os.close(ring_fd)
    try:
        answer, start = _attempt(conn.recv)  # unpickling `fill` imports its module
        conn.send(answer)
        if answer is None:
            fill, slot_bytes = start
            while True:
                slot, task = conn.recv()
                part = view[slot * slot_bytes:(slot + 1) * slot_bytes]
                conn.send(_attempt(functools.partial(fill, task, part))[0])
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
    into slots of `slot_bytes`; at most `count * DEPTH` tasks are pending at a time."""

    def __init__(self, count: int, fill: Fill, slot_bytes: int):
        self.slots = count * DEPTH
        self._slot_bytes = slot_bytes
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._submitted = self._taken = 0
        self._started: list[bool] = []
        fd = os.memfd_create("tipretrieval-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, self.slots * slot_bytes)
            self._ring = mmap.mmap(fd, self.slots * slot_bytes)
            self._view = memoryview(self._ring)  # (set together: close() releases both)
            for _ in range(count):
                self._start(fd, fill)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(fd)

    def _start(self, ring_fd: int, fill: Fill) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _ROOT, str(theirs.fileno()), str(ring_fd)],
                pass_fds=(theirs.fileno(), ring_fd), stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        self._conns.append(Connection(ours.detach()))
        self._started.append(False)
        self._conns[-1].send((fill, self._slot_bytes))

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

    def _answer(self, i: int) -> None:
        """Receive worker `i`'s next answer; raise the error it reports."""
        try:
            answer = self._conns[i].recv()
        except (EOFError, OSError) as exc:
            raise self._died(i) from exc
        if answer is not None:
            kind, problem, hint = answer
            raise RuntimeError(f"a store reader worker failed: {problem}") if kind is None \
                else kind(problem, hint)

    @property
    def full(self) -> bool:
        """Whether every slot holds a task not yet taken."""
        return self._submitted - self._taken == self.slots

    def submit(self, task: Any) -> None:
        """Send the next task to its worker (the ring must not be `full`)."""
        assert not self.full, "take() a slot before submitting more tasks"
        k = self._submitted
        self._send(k, (k % self.slots, task))
        self._submitted += 1

    def _send(self, k: int, message: Any) -> None:
        try:
            self._conns[k % len(self._conns)].send(message)
        except OSError as exc:
            raise self._died(k % len(self._conns)) from exc

    def take(self) -> memoryview:
        """The slot of the oldest pending task once its worker has filled it (valid until the
        next `submit`); raises the worker's error (the same TipError as in-process)."""
        k = self._taken
        worker = k % len(self._conns)
        self._start_answer(worker, wait=True)
        self._taken += 1
        self._answer(worker)
        slot = k % self.slots
        return self._view[slot * self._slot_bytes:(slot + 1) * self._slot_bytes]

    def _died(self, i: int) -> TipError:
        proc = self._procs[i]
        try:
            code = proc.wait(_DIED_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        return TipError(f"a store reader worker process stopped unexpectedly (exit code {code})",
                        "rerun with `workers=0` to read in this process and see the error")

    def close(self) -> None:
        """Stop the workers and free the ring. Workers only read, so they are killed at once
        rather than waited for (one may still be starting or filling a slot)."""
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            proc.kill()
            proc.wait()
        self._conns, self._procs = [], []
        if hasattr(self, "_ring"):
            self._view.release()
            with contextlib.suppress(BufferError):  # a slot still referenced: freed with it
                self._ring.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
