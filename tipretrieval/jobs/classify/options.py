"""What a classify job computes and how it writes it: `ClassifyOptions`."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import BadInput
from ...method.adapter import METHODS, MODES
from .output import writer_for


@dataclass(frozen=True)
class ClassifyOptions:
    """What to compute and how to write it; all of it determines the output."""

    top_k: int = 5
    method: str = "tip"
    mode: str = "exact"
    k: int = 64
    fmt: str = "parquet"
    batch_size: int = 8192
    logits: bool = False
    split: str | None = None
    evidence: int = 0  # cache keys behind each row's top class to write (0 = none)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInput(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise BadInput(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        for name in ("top_k", "k", "batch_size"):
            if getattr(self, name) < 1:
                raise BadInput(f"`{name}=` is {getattr(self, name)}", "give 1 or more")
        if self.evidence < 0:
            raise BadInput(f"evidence is {self.evidence}: give 0 (none) or more keys per row")
        if self.evidence and self.method == "zero-shot":
            raise BadInput("zero-shot uses no cache keys, so there is no evidence",
                           "give `evidence=` 0 or use `method=` tip or cache")
        writer_for(self.fmt)


