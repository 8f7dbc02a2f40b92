"""Evidence columns of a classify job: the cache keys behind each row's top class, named.

The adapter finds the keys (`TipAdapter.evidence`); their string ids come from the store the
cache was built from (`KeyIds`), read once per engine (driver or Ray actor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import BadInput
from ...store.store import Store

EVIDENCE_COLUMNS = ("ids", "features", "row_ids")  # the reader always reads features


@dataclass(frozen=True)
class KeyIds:
    """String ids of a cache's keys, looked up by store row id."""

    row_ids: np.ndarray  # (M,) int64, sorted
    ids: np.ndarray      # (M,) object array of str, aligned with row_ids

    @classmethod
    def of(cls, cache) -> KeyIds:
        """Read the ids of `cache`'s keys from the store it was built from."""
        where = cache.info.store_path
        if not where or not (Path(where) / "manifest.json").exists():
            raise BadInput(f"evidence names each key by its id in the cache's store, but the "
                           f"store {where or '(none recorded)'} is not there",
                           "make it readable at that path or give `evidence=` 0")
        store = Store.open(where)
        if store.store_id != cache.store_id:
            raise BadInput(f"{where} is not the store cache keys came from (store id "
                           f"{store.store_id}, cache built from {cache.store_id})",
                           "give `evidence=` 0")
        rows = store.select(row_ids=cache.row_ids, columns=EVIDENCE_COLUMNS,
                            features_dtype=None)
        order = np.argsort(rows.row_ids, kind="stable")
        found = cls(rows.row_ids[order].astype(np.int64), rows.ids[order])
        if len(found.row_ids) != len(np.unique(cache.row_ids)):
            raise BadInput(f"store {where} lacks some cache keys' rows",
                           "give `evidence=` 0 or rebuild the cache from this store")
        return found

    def lookup(self, row_ids: np.ndarray) -> np.ndarray:
        """Ids of `row_ids` (any shape), "" where the row id is -1 (padding)."""
        slot = np.clip(np.searchsorted(self.row_ids, row_ids), 0, max(len(self.row_ids) - 1, 0))
        ids = self.ids[slot] if len(self.ids) else np.full(row_ids.shape, "", dtype=object)
        return np.where(row_ids >= 0, ids, "").astype(object)


def evidence_columns(cache, key_ids: KeyIds, features: np.ndarray, classes: np.ndarray,
                     n: int) -> dict[str, np.ndarray]:
    """The four evidence arrays of `Results` for rows `features` whose top class is `classes`."""
    row_ids, sims = cache.adapter().evidence(features, classes, n)
    labels = np.where(row_ids >= 0, np.asarray(classes, dtype=np.int64)[:, None], -1)
    return {"evidence_row_ids": row_ids, "evidence_ids": key_ids.lookup(row_ids),
            "evidence_labels": labels.astype(np.int64), "evidence_sims": sims}
