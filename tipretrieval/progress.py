"""Progress bars on stderr (rows or images per second, ETA)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int | None, desc: str, unit: str = "rows", disable: bool = False) -> tqdm:
    """A tqdm bar on stderr that shows rate and ETA; quiet when `disable`."""
    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
        dynamic_ncols=True, disable=disable, smoothing=0.1,
    )
