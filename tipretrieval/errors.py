"""Errors with one-line messages that name the problem and, in `hint`, the fix.

A hint names API parameters as `name=` (in backticks; `owner.name=` where `name=` alone is
ambiguous) and API calls as `Type.method()`; the CLI prints the same hint with each replaced by
its command-line option or command. `str(error)` is "problem: hint".
"""

from __future__ import annotations


class TipError(Exception):
    """A failure tipretrieval reports to the user; the CLI exits with `exit_code`."""

    exit_code = 1

    def __init__(self, problem: str, hint: str | None = None) -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(problem if hint is None else f"{problem}: {hint}")


class BadInput(TipError):
    """Input the user can fix (wrong shape, unknown class, not a store ...): exit code 2."""

    exit_code = 2


class CorruptData(BadInput):
    """Stored data failed a check (missing, truncated or corrupt file): exit code 2."""


class StoreLocked(TipError):
    """Another writer held the lock of a store, cache or classify output too long: exit code 1."""


class ConcurrentChange(TipError):
    """A store, cache or output changed under this process (load it again): exit code 1."""


class NewerFormat(BadInput):
    """A file written by a newer tipretrieval (its format version is unknown): exit code 2."""
