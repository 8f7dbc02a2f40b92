"""Encoder provenance: which model and preprocessing produced a set of features."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import BadInput


@dataclass(frozen=True)
class Provenance:
    """Fixed when a store is created; features from a different encoder are refused.

    `encoder` names the model (open_clip name, or "external" for imported features);
    `weights` is the pretrained tag or "sha256:<hex>" of a checkpoint file.
    """

    encoder: str
    weights: str
    dim: int
    normalized: bool = True
    preprocess: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Provenance:
        return cls(
            encoder=obj["encoder"],
            weights=obj["weights"],
            dim=int(obj["dim"]),
            normalized=bool(obj.get("normalized", True)),
            preprocess=dict(obj.get("preprocess", {})),
        )

    def same_encoder(self, other: Provenance) -> bool:
        """True when both describe the same model, weights and feature dim."""
        return (self.encoder, self.weights, self.dim) == (other.encoder, other.weights, other.dim)

    def check_compatible(self, other: Provenance, what: str = "features") -> None:
        """Raise BadInput when `other` came from a different encoder than `self`."""
        if not self.same_encoder(other):
            raise BadInput(
                f"{what} come from encoder {other.describe()} but this store/cache holds "
                f"{self.describe()}: encode them with the same model and weights"
            )

    def describe(self) -> str:
        return f"{self.encoder} ({self.weights}, dim {self.dim})"
