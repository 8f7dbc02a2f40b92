"""Which encoder made some features, and encoding images with it into a store.

`encoder_for` is the one rule for every command that must encode like an existing store or
cache (extract into a store, text classifiers, new shots, query images): the options given
win, the rest comes from the features' `Provenance`; weights that cannot be loaded by name
(a checkpoint file, random or external features) must be given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import BadInput
from ..provenance import Provenance
from .extract import ExtractOptions, extract
from .model import RANDOM_WEIGHTS, Encoder, load_encoder
from .sources import ImageItem, Source, scan_source


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder by name: open_clip model name (or config .json) and its weights."""

    model: str
    pretrained: str | None = None
    checkpoint: str | None = None

    def resolved(self) -> EncoderSpec:
        """This spec with file paths made absolute (Ray actors may run in another directory)."""
        if not (self.pretrained or self.checkpoint):
            raise BadInput("Ray actors need fixed weights (random ones differ per actor)",
                           "pass `pretrained=` TAG or `checkpoint=` FILE")
        model = str(Path(self.model).resolve()) if self.model.endswith(".json") else self.model
        checkpoint = str(Path(self.checkpoint).resolve()) if self.checkpoint else None
        return replace(self, model=model, checkpoint=checkpoint)

    def load(self, device: str | None = "auto") -> Encoder:
        return load_encoder(self.model, pretrained=self.pretrained, checkpoint=self.checkpoint,
                            device=device)


def spec_for(provenance: Provenance | None, *, model: str | None = None,
             pretrained: str | None = None, checkpoint: str | Path | None = None) -> EncoderSpec:
    """The encoder that made `provenance`, with any of its parts given explicitly."""
    given = pretrained or checkpoint
    if provenance is not None and not given:
        if provenance.weights.startswith("sha256:") or provenance.weights == RANDOM_WEIGHTS \
                or provenance.encoder in ("external", "synthetic"):
            raise BadInput(f"features come from {provenance.describe()}, which cannot be loaded "
                           "by name", "pass `checkpoint=` FILE, the weights they were "
                           "encoded with")
        pretrained = provenance.weights
    model = model or (provenance.encoder if provenance is not None else None)
    if model is None or not (pretrained or checkpoint):
        raise BadInput("no encoder given",
                       "pass `model=` NAME with `pretrained=` TAG or `checkpoint=` FILE")
    return EncoderSpec(model, pretrained, None if checkpoint is None else str(checkpoint))


def encoder_for(provenance: Provenance | None, *, model: str | None = None,
                pretrained: str | None = None, checkpoint: str | Path | None = None,
                device: str | None = "auto") -> Encoder:
    """Load the encoder that made `provenance` (see `spec_for`), checked to match its features."""
    encoder = spec_for(provenance, model=model, pretrained=pretrained,
                       checkpoint=checkpoint).load(device)
    if provenance is not None:
        provenance.check_compatible(encoder.provenance, "features of the requested encoder")
    return encoder


def labelled_source(spec: str | Path, label: str | None = None) -> Source:
    """The images of `spec`, all of class `label` (None: class folders / CSV labels)."""
    source = scan_source(spec, unlabelled=label is not None)
    if label is not None:
        source = Source(source.root, [ImageItem(it.id, it.path, label) for it in source.items])
    if not source.labelled:
        raise BadInput(f"images of {spec} have no class",
                       "give them a label or use class folders")
    return source


def encode_into_store(sources: Sequence[Source], store: Path, encoder: Encoder, *, split: str,
                      views: int = 0, strict: bool = False, show_progress: bool = True
                      ) -> list[str]:
    """Encode `sources` into the store at `store` (made when missing); the ids of their rows.

    Images already stored are skipped, so a killed call resumes. An unreadable image is skipped
    (listed in the extract report), or with `strict` a BadInput after the readable ones.
    """
    ids = []
    for source in sources:
        report = extract(source, store, encoder,
                         ExtractOptions(split=split, views=views, progress=show_progress))
        if strict and report.bad:
            raise BadInput(f"{len(report.bad)} images of {source.root} could not be read "
                           f"(first: {report.bad[0].path})", "fix or remove them and retry")
        bad = {b.id for b in report.bad}
        ids += [it.id for it in source.items if it.id not in bad]
    return ids
