"""CLIP encoding: open_clip loading, image sources, transforms, extraction, text classifiers.

`extract` (images -> store) lives in `tipretrieval.encode.extract`.
"""

from .model import Encoder, load_encoder
from .sources import ImageItem, Source, scan_source
from .text import TextClassifier, load_templates, read_classnames, text_classifier

__all__ = [
    "Encoder", "ImageItem", "Source", "TextClassifier", "load_encoder", "load_templates",
    "read_classnames", "scan_source", "text_classifier",
]
