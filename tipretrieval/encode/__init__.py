"""CLIP encoding: open_clip loading, image sources, transforms, extraction, text classifiers.

`extract` (images -> store) lives in `tipretrieval.encode.extract`; which encoder made some
features and encoding images with it into a store (`encoder_for`, `encode_into_store`) in
`tipretrieval.encode.resolve`.
May import: the contracts, `util` and `store`; never `method`, `cache`, `jobs`, `demo`, `cli`.
"""

from .model import Encoder, load_encoder
from .sources import ImageItem, Source, scan_source
from .text import TextClassifier, load_templates, read_classnames, text_classifier

__all__ = [
    "Encoder", "ImageItem", "Source", "TextClassifier", "load_encoder", "load_templates",
    "read_classnames", "scan_source", "text_classifier",
]
