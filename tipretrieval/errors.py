"""Errors with one-line messages that name the problem and the fix."""

from __future__ import annotations


class TipError(Exception):
    """A failure tipretrieval reports to the user; the CLI exits with `exit_code`."""

    exit_code = 1


class BadInput(TipError):
    """Input the user can fix (wrong shape, unknown class, not a store ...): exit code 2."""

    exit_code = 2


class CorruptData(BadInput):
    """Stored data failed a check (missing, truncated or corrupt shard): exit code 2."""
