"""Prompt templates and the CLIP text classifier (one L2-normalised row per class).

Each class name ('_' read as a space) fills every template; the prompt embeddings are
L2-normalised, averaged and renormalised, as CLIP's and Tip-Adapter's zero-shot classifiers do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..provenance import Provenance
from ..util.atomic import atomic_path
from .model import Encoder

TEMPLATE_FILES = {
    "clip_imagenet": "clip_imagenet.txt",   # CLIP's 80 ImageNet prompts
    "tip_imagenet": "tip_imagenet.txt",     # Tip-Adapter's 7-prompt ImageNet ensemble
}
PER_DATASET_FILE = "per_dataset.json"      # CoOp / Tip-Adapter single prompt per dataset
_TEMPLATES = files("tipretrieval.templates")  # package data; its source is data/templates


def _per_dataset() -> dict[str, str]:
    return json.loads(_TEMPLATES.joinpath(PER_DATASET_FILE).read_text())


def template_names() -> list[str]:
    """Names `load_templates` accepts besides a file path."""
    return sorted(TEMPLATE_FILES) + sorted(_per_dataset())


def _read_template_file(path: Path | Traversable) -> list[str]:
    if path.name.endswith(".json"):
        loaded = json.loads(path.read_text())
        return [str(t) for t in loaded]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_templates(name_or_path: str | Path) -> list[str]:
    """A shipped template set by name, or a user's file (one template per line, or a JSON list)."""
    name = str(name_or_path)
    per_dataset = _per_dataset()
    if name in TEMPLATE_FILES:
        templates = _read_template_file(_TEMPLATES.joinpath(TEMPLATE_FILES[name]))
    elif name in per_dataset:
        templates = [per_dataset[name]]
    elif Path(name).is_file():
        templates = _read_template_file(Path(name))
    else:
        raise BadInput(
            f"unknown template set {name!r}: use one of {', '.join(template_names())} "
            "or a file with one template per line"
        )
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise BadInput(
            f"template set {name} has {'no templates' if not templates else repr(bad[0])}: "
            "each template needs exactly one {} where the class name goes"
        )
    return templates


def read_classnames(path: Path | str) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"class-name file {path} does not exist: give a file with one name a line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise BadInput(f"class-name file {path} is empty: write one class name a line")
    return names


def prompt_name(classname: str) -> str:
    """How a class name reads inside a prompt: '_' becomes a space."""
    return classname.replace("_", " ").strip()


def text_classifier(
    encoder: Encoder, classnames: list[str], templates: list[str], batch_size: int = 1024
) -> np.ndarray:
    """(C, D) float32: per class the renormalised mean of its L2-normalised prompt embeddings."""
    if not classnames:
        raise BadInput("no class names to build a text classifier for: give at least one")
    prompts = [t.format(prompt_name(c)) for c in classnames for t in templates]
    feats = np.concatenate([
        encoder.encode_text(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)
    ])
    means = feats.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class TextClassifier:
    """Class weights (C, D) with their class names, template set and encoder provenance."""

    weights: np.ndarray
    classes: list[str]
    templates: str
    provenance: Provenance

    def save(self, path: Path | str) -> None:
        """Write an .npz atomically: weights, classes, and the metadata as JSON."""
        meta = {"templates": self.templates, "provenance": self.provenance.to_json()}
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
            np.savez(f, weights=self.weights.astype(np.float32),
                     classes=np.array(self.classes, dtype=str), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path | str, expect: Provenance | None = None) -> TextClassifier:
        """Read a saved classifier; BadInput when `expect` names a different encoder."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                weights, classes = z["weights"], [str(c) for c in z["classes"]]
                meta = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise BadInput(f"{path} is not a text classifier file ({exc})",
                           "make one with the `text` command or `TextClassifier.save`") from exc
        clf = cls(weights, classes, meta["templates"], Provenance.from_json(meta["provenance"]))
        if expect is not None:
            expect.check_compatible(clf.provenance, f"the text classifier {path}")
        return clf


def build_text_classifier(
    encoder: Encoder, classnames: list[str], templates: str | Path
) -> TextClassifier:
    """The text classifier for `classnames` under the named template set or template file."""
    weights = text_classifier(encoder, classnames, load_templates(templates))
    return TextClassifier(weights, list(classnames), str(templates), encoder.provenance)
