"""What a report shows, independent of how it is rendered: `Report`, its `Card`s and `Shot`s."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .stats import Stats


@dataclass
class Shot:
    """An evidence shot: a cache key that contributed most to a row's prediction."""

    id: str
    label: str
    sim: float | None  # similarity to the row (None: a class's shot, not a row's evidence)
    thumb: str | None = None  # thumbnail path relative to the report directory
    image: str | None = None  # file:// URI of the source image


@dataclass
class Card:
    """One classified row as shown: its image (or id), top classes and evidence."""

    id: str
    row_id: int
    top: list[tuple[int, str, float]]  # (class index, name, probability), best first
    margin: float
    label: str | None = None  # the true class name, for labelled rows
    thumb: str | None = None
    image: str | None = None
    evidence: list[Shot] = field(default_factory=list)


@dataclass
class Report:
    """Everything a report's pages show."""

    title: str
    output: str  # the classify output the report describes
    classes: list[str]
    stats: Stats
    shots: np.ndarray | None  # (C,) cache keys per class, when the cache is known
    samples: dict[int, list[Card]]  # predicted class -> the rows shown on its page
    class_shots: dict[int, list[Shot]]  # class -> some of its cache keys (shots)
    per_class_cap: int
    uncertain: list[Card]
    notes: list[str]  # caveats shown on every page's summary (sampling, missing images)
    label_files: dict[str, str]  # what -> file name of the files listing `uncertain`
    links: list[tuple[str, str]] = field(default_factory=list)  # (text, href) of related pages
