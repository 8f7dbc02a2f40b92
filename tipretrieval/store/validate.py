"""Validation of rows and class lists before they are written to a store."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..provenance import Provenance
from ..rows import Rows
from .manifest import Manifest
from .normalise import first_bad, non_finite, row_norms, rows_of
from .shard import IdKeys, same_strings

NORM_TOLERANCE = 2e-3


class DuplicateIds(BadInput):
    """Rows whose ids the store already holds."""


def check_vectors(x: np.ndarray, ids: np.ndarray, what: str, normalised: bool,
                  norms: np.ndarray | None = None) -> None:
    """BadInput naming the rows of `x` (features or views) that hold NaN or inf or, when
    `normalised`, whose L2 norm is not 1 (within NORM_TOLERANCE); one blockwise pass, none when
    the caller has the `row_norms` of `x` already (`norms`)."""
    norms = row_norms(x) if norms is None else norms
    bad = rows_of(non_finite(x, norms))
    if bad.any():
        raise BadInput(f"{what} of {first_bad(bad, ids)} contain NaN or inf: drop or "
                       "recompute those rows")
    bad = rows_of(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if normalised and bad.any():
        raise BadInput(f"{what} of {first_bad(bad, ids)} are not L2-normalised",
                       "normalise them first (importing does so unless told not to)")


def _check_strings(values: Iterable[str], what: str) -> None:
    values = list(values)
    joined = "".join(values)
    if all(values) and "\x00" not in joined and _unicode(joined):  # the usual case, at C speed
        return
    for v in values:
        if not v or "\x00" in v:
            raise BadInput(f"{what} {v!r} is empty or contains a NUL character: give every "
                           f"row a non-empty {what}")
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadInput(f"{what} {v!r} is not valid Unicode ({exc.reason}): decode it "
                               "with the right codec first") from exc


def _unicode(text: str) -> bool:
    """Whether `text` is valid Unicode (encodable as UTF-8: no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def extended_classes(current: tuple[str, ...], classes: Iterable[str]) -> tuple[str, ...]:
    """`classes` when it starts with the `current` vocabulary (in order); BadInput otherwise."""
    classes = tuple(str(c) for c in classes)
    if len(set(classes)) != len(classes) or not all(classes):
        raise BadInput("class names are empty or not unique: give each class once")
    for i, name in enumerate(current):
        if i >= len(classes) or classes[i] != name:
            got = classes[i] if i < len(classes) else "nothing"
            raise BadInput(
                f"class list differs from the store's vocabulary at label {i} ({got!r}, store "
                f"has {name!r}): list the store's {len(current)} classes first, in order"
            )
    return classes



def check_rows(rows: Rows, keys: IdKeys, manifest: Manifest, provenance: Provenance | None,
               store_path: Path, norms: np.ndarray | None = None) -> None:
    """BadInput unless `rows` (whose ids are `keys`; `norms`, when given, the `row_norms` of
    their features) fit the store described by `manifest`: encoder, shapes, finite and
    normalised vectors, label range, non-empty unique ids."""
    if provenance is not None:
        manifest.provenance.check_compatible(provenance)
    n = len(rows)
    if rows.features.ndim != 2 or rows.features.shape[1] != manifest.dim:
        raise BadInput(
            f"features have shape {rows.features.shape} but store {store_path} holds dim "
            f"{manifest.dim}: encode them with {manifest.provenance.describe()} or use "
            "another store"
        )
    check_vectors(rows.features, rows.ids, "features", manifest.provenance.normalized, norms)
    if rows.views is not None:
        if rows.views.ndim != 3 or rows.views.shape[0] != n or \
                rows.views.shape[2] != manifest.dim:
            raise BadInput(f"views have shape {rows.views.shape}, expected ({n}, V, "
                           f"{manifest.dim}): give V views of dim {manifest.dim} per row")
        check_vectors(rows.views, rows.ids, "views", manifest.provenance.normalized)
    k = len(manifest.classes)
    bad = (rows.labels < -1) | (rows.labels >= k)
    if bad.any():
        raise BadInput(
            f"labels of {first_bad(bad, rows.ids)} are outside -1..{k - 1} (the store has "
            f"{k} classes)", "fix the labels or extend the class list (`classes=`)"
        )
    _check_strings(rows.ids, "id")
    _check_strings(sorted(map(str, set(rows.splits.tolist()))), "split")  # (few distinct)
    if rows.sources is not None and not same_strings(rows.sources, rows.ids):
        _check_strings(rows.sources, "source")  # (sources equal to the ids were just checked)
    hashes = keys.hashes[keys.order]
    if not (hashes[1:] == hashes[:-1]).any():  # equal ids hash equal: all ids differ
        return
    uniq, counts = np.unique(keys.encoded, return_counts=True)
    if (counts > 1).any():
        dups = uniq[counts > 1]
        raise BadInput(f"{len(dups)} ids occur more than once in the batch (e.g. "
                       f"{dups[0].decode()!r}): give every row a unique id")
