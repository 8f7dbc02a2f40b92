"""Which labelled images are held out for validation: per class, 1 in 5 images (at most 10) of
classes with at least 5, chosen by a hash of the image id.

Why: Tip-Adapter's alpha/beta search (and Tip-Adapter-F's epoch choice) needs validation rows
the cache does not hold, but a class with 1-4 images loses more from a missing shot than the
search gains, so such classes keep every image as a shot. A stored image keeps its split; new
images fill a class's validation quota first (by hash order), so reruns are stable.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...encode.sources import ImageItem, Source
from ...store.manifest import MANIFEST_NAME
from ...store.store import Store

VAL_FROM = 5  # classes with fewer images hold none out
VAL_EVERY = 5  # one validation image per this many images of a class
VAL_MAX = 10  # at most this many validation images per class
TRAIN, VAL = "train", "val"

RULE = (f"1 in {VAL_EVERY} images (at most {VAL_MAX}) of each class with at least {VAL_FROM} "
        "images, to tune alpha/beta without spending the shots of small classes")


def val_quota(images: int) -> int:
    """Validation images of a class with `images` labelled images."""
    return 0 if images < VAL_FROM else min(VAL_MAX, images // VAL_EVERY)


@dataclass
class Holdout:
    """The labelled images still to encode, split into train (shots) and val."""

    train: Source
    val: Source
    val_total: int  # validation images of the whole folder, stored or not


def _stored_splits(store_path: Path, ids: list[str]) -> dict[str, str]:
    """Image id -> split, for the ids already in the store."""
    if not (store_path / MANIFEST_NAME).exists() or not ids:
        return {}
    store = Store.open(store_path)
    rows = store.select(ids=np.array(ids, dtype=object)[store.existing_ids(ids)],
                        columns=("ids", "features", "splits"), features_dtype=None)
    return dict(zip(rows.ids.tolist(), rows.splits.tolist(), strict=True))


def plan_holdout(source: Source, store_path: Path) -> Holdout:
    """Assign the source's images not yet stored to train or val (see the module rule)."""
    stored = _stored_splits(store_path, [it.id for it in source.items])
    train: list[ImageItem] = []
    val: list[ImageItem] = []
    val_total = 0
    by_class: dict[str, list[ImageItem]] = {}
    for it in source.items:
        by_class.setdefault(it.label, []).append(it)
    for label in source.classes:
        members = by_class[label]
        have = sum(stored.get(it.id) == VAL for it in members)
        todo = sorted((it for it in members if it.id not in stored),
                      key=lambda it: (zlib.crc32(it.id.encode()), it.id))
        need = max(0, val_quota(len(members)) - have)
        val += todo[:need]
        train += todo[need:]
        val_total += have + min(need, len(todo))
    return Holdout(Source(source.root, train), Source(source.root, val), val_total)
