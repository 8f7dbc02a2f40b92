"""`Rows`: a batch of store rows, the unit every layer passes around."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import BadInput


def _strings(values, n: int, what: str) -> np.ndarray:
    arr = np.array(values, dtype=object).reshape(-1)
    if arr.shape[0] != n:
        raise BadInput(f"{what} has {arr.shape[0]} entries for {n} rows: give one per row")
    if set(map(type, arr.tolist())) <= {str}:  # already str (a C-speed check): no copy
        return arr
    return np.array([str(v) for v in arr], dtype=object)


@dataclass
class Rows:
    """Rows of features with their ids, labels (-1 = unlabelled), splits and optional views.

    `features` is (N, D) float32; `views` (N, V, D) float32 when present; `row_ids` are the
    int64 ids the store assigned (None before the rows are appended). A store read with
    `columns=` leaves the columns it did not read as None.
    """

    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    sources: np.ndarray | None = None
    views: np.ndarray | None = None
    row_ids: np.ndarray | None = None

    @classmethod
    def make(cls, ids, features, labels=None, splits="train", sources=None, views=None,
             row_ids=None, keep_float16: bool = False) -> Rows:
        """Build Rows with types coerced and lengths checked; scalar `splits` applies to all.
        `keep_float16` keeps float16 features as given (for appending to a float16 store
        without a float32 round trip); otherwise features become float32."""
        if not (keep_float16 and np.asarray(features).dtype == np.float16):
            features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2:
            raise BadInput(f"features must be a 2-D (rows, dim) array, got shape {features.shape}")
        n = features.shape[0]
        if labels is None:
            labels = np.full(n, -1, dtype=np.int64)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if labels.shape[0] != n:
            raise BadInput(f"labels has {labels.shape[0]} entries for {n} rows: give one per row")
        if isinstance(splits, str):
            splits = np.full(n, splits, dtype=object)
        return cls(
            ids=_strings(ids, n, "ids"),
            features=features,
            labels=labels,
            splits=_strings(splits, n, "splits"),
            sources=None if sources is None else _strings(sources, n, "sources"),
            views=None if views is None else np.asarray(views, dtype=np.float32),
            row_ids=None if row_ids is None else np.asarray(row_ids, dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def take(self, index) -> Rows:
        """The rows at `index` (a slice, boolean mask or integer array)."""
        def pick(a):
            return None if a is None else a[index]
        return Rows(
            ids=pick(self.ids), features=self.features[index], labels=pick(self.labels),
            splits=pick(self.splits), sources=pick(self.sources), views=pick(self.views),
            row_ids=pick(self.row_ids),
        )

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        """Concatenate batches; optional columns are kept only when every part has them."""
        if not parts:
            raise ValueError("concat needs at least one Rows")

        def join(name):
            cols = [getattr(p, name) for p in parts]
            if any(c is None for c in cols):
                return None
            if name == "views" and len({c.shape[1] for c in cols}) > 1:
                raise BadInput("rows have different numbers of views", "extract them with "
                               "the same `views=`, or read them without views")
            return np.concatenate(cols)
        return cls(
            ids=join("ids"), features=join("features"), labels=join("labels"),
            splits=join("splits"), sources=join("sources"), views=join("views"),
            row_ids=join("row_ids"),
        )
