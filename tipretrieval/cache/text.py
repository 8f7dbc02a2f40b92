"""Where a cache's text classifier comes from: an array, a saved file, or prompt templates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..encode.model import Encoder
from ..encode.resolve import encoder_for
from ..encode.text import TextClassifier, load_templates, text_classifier
from ..errors import BadInput
from ..provenance import Provenance

TextInput = np.ndarray | str | Path | None  # an array, a saved text-classifier file, or none


def check_text(text: np.ndarray | None, num_classes: int, dim: int) -> np.ndarray | None:
    """`text` as contiguous float32 (C, D); BadInput when its shape does not fit the cache."""
    if text is None:
        return None
    text = np.ascontiguousarray(text, dtype=np.float32)
    if text.shape != (num_classes, dim):
        raise BadInput(f"text classifier has shape {text.shape} but the cache needs "
                       f"({num_classes}, {dim})", "build it for the same classes and encoder")
    return text


@dataclass(frozen=True)
class TextSource:
    """A text classifier (None: the cache has none) and where it came from (templates, file)."""

    weights: np.ndarray | None
    templates: str | None = None
    source: str | None = None


def resolve_text(text: TextInput, templates: str | None, classes: list[str],
                 provenance: Provenance, encoder: Encoder | None = None) -> TextSource:
    """The (C, D) text classifier from an array, a saved file, or templates + the encoder;
    none of them: no text classifier (a cache whose methods are cache and gda)."""
    if text is not None and templates is not None:
        raise BadInput("both a text classifier and templates given",
                       "give either `text=` FILE or `templates=` NAME")
    if isinstance(text, np.ndarray):
        return TextSource(text)
    if text is not None:
        return _text_from_file(Path(text), classes, provenance)
    if templates is not None:
        return TextSource(_encode_text(provenance, classes, templates, encoder), templates)
    return TextSource(None)


def _text_from_file(path: Path, classes: list[str], provenance: Provenance) -> TextSource:
    """Rows of a saved text classifier, reordered to `classes`; its encoder must match."""
    saved = TextClassifier.load(path, expect=provenance)
    where = {name: i for i, name in enumerate(saved.classes)}
    missing = [c for c in classes if c not in where]
    if missing:
        raise BadInput(f"text classifier {path} lacks classes {missing[:5]}",
                       "rebuild it for the store's classes")
    rows = np.asarray(saved.weights, dtype=np.float32)[[where[c] for c in classes]]
    return TextSource(rows, saved.templates, str(path.resolve()))


def _encode_text(provenance: Provenance, classes: list[str], templates: str,
                 encoder: Encoder | None = None) -> np.ndarray:
    """Encode the class prompts of `templates` with the cache's encoder (default: by name)."""
    if encoder is None:
        encoder = encoder_for(provenance)
    provenance.check_compatible(encoder.provenance, "the text encoder's features")
    return np.asarray(text_classifier(encoder, classes, load_templates(templates)),
                      dtype=np.float32)


def new_class_text(names: list[str], text: TextInput, provenance: Provenance, templates: str | None,
                   text_source: str | None, encoder: Encoder | None = None) -> np.ndarray:
    """Text-classifier rows for new classes: given, or encoded with the cache's `templates`."""
    if text is not None:
        return resolve_text(text, None, names, provenance).weights
    if templates is None:
        raise BadInput(f"the cache's text classifier came from {text_source or 'an array'} "
                       "without templates, so new classes cannot be encoded",
                       f"pass `text=` FILE holding text embeddings for {', '.join(names)}")
    return _encode_text(provenance, names, templates, encoder)
