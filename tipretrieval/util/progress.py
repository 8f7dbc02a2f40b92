"""Progress bars on stderr (rows or images per second, ETA)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int | None, desc: str, unit: str = "rows", disable: bool = False) -> tqdm:
    """A tqdm bar on stderr that shows rate and ETA; quiet when `disable`.

    Redirected to a file or pipe (a log), it updates every 30 s instead of many times a second.
    """
    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
        dynamic_ncols=True, disable=disable, smoothing=0.1,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
