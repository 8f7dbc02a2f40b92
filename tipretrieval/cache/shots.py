"""A cache's shots: seeded per-class sampling of labelled rows, and reading them back later."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import BadInput
from ..rows import Rows
from ..store.store import Store

log = logging.getLogger(__name__)


def sample_shots(labels: np.ndarray, row_ids: np.ndarray, num_classes: int,
                 shots: int | None, seed: int = 0) -> np.ndarray:
    """Indices of up to `shots` rows per class (all when None), seeded; sorted by class then id.

    Sampling depends only on the labels, row ids and seed, never on row order, so the same
    store and seed give the same shots.
    """
    if shots is not None and shots <= 0:
        raise BadInput(f"shots must be a positive number of rows per class, got {shots}",
                       "give `shots=` K >= 1")
    rng = np.random.default_rng(seed)
    order = np.lexsort((row_ids, labels))
    sorted_labels = labels[order]
    bounds = np.searchsorted(sorted_labels, np.arange(num_classes + 1))
    chosen, short = [], []
    for c in range(num_classes):
        members = order[bounds[c]:bounds[c + 1]]
        if shots is not None and len(members) > shots:
            members = members[np.sort(rng.choice(len(members), size=shots, replace=False))]
        elif shots is not None and len(members) < shots:
            short.append((c, len(members)))
        chosen.append(members)
    if short:
        listed = ", ".join(f"{c}: {n}" for c, n in short[:10])
        more = f" (+{len(short) - 10} more)" if len(short) > 10 else ""
        log.warning("%d classes have fewer than %d labelled rows; using all of them (class: "
                    "rows %s%s)", len(short), shots, listed, more)
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def check_store(store: Store, store_id: str | None) -> None:
    """BadInput unless `store` is the store with id `store_id` (None: any store)."""
    if store_id is not None and store.store_id != store_id:
        raise BadInput(f"store {store.path} is not the store this cache was built from "
                       f"(id {store_id})", "pass that store")


def new_shots(store: Store, keys: np.ndarray, store_id: str | None, split: str,
              ids: Sequence[str] | None = None) -> Rows:
    """The labelled `split` rows of `store` to add as shots: those of `ids` (each must be one),
    or with no ids every one whose row id is not in `keys` yet."""
    check_store(store, store_id)
    if ids is not None and not len(ids):
        raise BadInput("an empty list of ids", "give ids, or `ids=None` for every new row")
    rows = store.select(split=split, ids=list(ids) if ids else None)
    rows = rows.take(rows.labels >= 0)
    if ids:
        missing = sorted(set(ids) - set(rows.ids.tolist()))
        if missing:
            raise BadInput(f"ids {missing[:5]} are not labelled '{split}' rows of {store.path}",
                           "check the ids and `split=`")
        return rows
    rows = rows.take(~np.isin(rows.row_ids, keys))
    if not len(rows):
        raise BadInput(f"every labelled '{split}' row of {store.path} is already a key",
                       "add rows to the store first, or images")
    return rows


def row_ids_of(store: Store, store_id: str | None, ids: Sequence[str]) -> np.ndarray:
    """The store row ids of the rows `ids` of `store` (each must be one)."""
    check_store(store, store_id)
    found = store.select(ids=list(ids))
    missing = sorted(set(ids) - set(found.ids.tolist()))
    if missing:
        raise BadInput(f"ids {missing[:5]} are not in store {store.path}", "check the ids")
    return found.row_ids


def stored_shots(store: Store, wanted: np.ndarray, dim: int, store_id: str | None, *,
                 with_views: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored features (M, dim) and views (M, V, dim) or None of the rows `wanted` (a cache's
    shots), in that order, from `store` (whose id must be `store_id` when given)."""
    check_store(store, store_id)
    features = np.zeros((len(wanted), dim), dtype=np.float32)
    views: np.ndarray | None = None
    found = np.zeros(len(wanted), dtype=bool)
    for batch in store.iter_rows(8192, row_ids=wanted, with_views=with_views):
        hit = np.isin(batch.row_ids, wanted)
        if not hit.any() or (with_views and batch.views is None):
            continue
        pos = _positions(wanted, batch.row_ids[hit])
        features[pos] = batch.features[hit]
        found[pos] = True
        if with_views:
            if views is None:
                views = np.zeros((len(wanted), *batch.views.shape[1:]), dtype=np.float32)
            if batch.views.shape[1:] != views.shape[1:]:
                raise BadInput(f"shots have different numbers of views ({views.shape[1]}, "
                               f"{batch.views.shape[1]})", "extract them with the same `views=`")
            views[pos] = batch.views[hit]
    if not found.all():
        what = "augmented views" if with_views else "rows"
        fix = ("extract the training images with `views=` V (e.g. 10) to fine-tune"
               if with_views else "the store lost rows: rebuild the cache")
        raise BadInput(f"{int((~found).sum())} of {len(wanted)} shots have no stored {what}"
                       f" in {store.path}", fix)
    return features, views


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in `ids` (unique) of the values `wanted` (all present)."""
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids, wanted, sorter=order)]
