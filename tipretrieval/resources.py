"""Paths of the small data files the project ships in `data/` (prompt templates, configs)."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import BadInput

_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "data",  # source checkout / editable install
    Path(sys.prefix) / "share" / "tipretrieval",  # wheel install (setup.cfg data_files)
)


def data_path(*parts: str) -> Path:
    """The shipped data file `data/<parts...>`; BadInput when it is not installed."""
    for root in _CANDIDATES:
        path = root.joinpath(*parts)
        if path.exists():
            return path
    raise BadInput(f"shipped data file {'/'.join(parts)} not found: reinstall tipretrieval")
