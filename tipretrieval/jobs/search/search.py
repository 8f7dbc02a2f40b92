"""Search a store: a text, an image or a stored row in, the nearest stored rows out (`Hits`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...encode.resolve import encoder_for
from ...encode.transforms import decode_image
from ...errors import BadInput
from ...store.store import Store
from .index import META, StoreIndex, index_dir, require

HIT_COLUMNS = ("ids", "features", "labels", "splits", "sources", "row_ids")


@dataclass
class Query:
    """What to search for: exactly one of a text, an image file or a stored row."""

    text: str | None = None
    image: Path | str | None = None
    row: str | None = None  # a store row id (int) or string id

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.text, self.image, self.row)) != 1:
            raise BadInput("give exactly one query", "`text=`, `image=` or `row=`")

    def vector(self, store: Store, *, model: str | None = None, pretrained: str | None = None,
               checkpoint: Path | str | None = None, device: str | None = "auto") -> np.ndarray:
        """The (1, D) float32 feature of this query, in the store's encoder space."""
        if self.row is not None:
            return _stored(store, str(self.row)).features[:1].astype(np.float32)
        encoder = encoder_for(store.provenance, model=model, pretrained=pretrained,
                              checkpoint=checkpoint, device=device)
        if self.text is not None:
            return encoder.encode_text([self.text])
        path = Path(self.image)
        if not path.is_file():
            raise BadInput(f"image {path} does not exist: give the path of an image file")
        try:
            image = decode_image(path)
        except OSError as err:
            raise BadInput(f"cannot read image {path} ({err}): give a JPEG/PNG file") from err
        return encoder.encode_images(encoder.preprocess(image)[None])


def _stored(store: Store, row: str):
    """The stored row with row id `row` (digits) or string id `row`."""
    rows = store.select(row_ids=[int(row)]) if row.lstrip("-").isdigit() else store.select(
        ids=[row])
    if not len(rows):
        raise BadInput(f"store {store.path} has no row {row!r}: give a row id or id it holds")
    return rows


@dataclass
class Hits:
    """The k nearest stored rows of one query, best first."""

    row_ids: np.ndarray  # (n,) int64
    ids: np.ndarray      # (n,) object str
    sources: np.ndarray  # (n,) object str ("" when none)
    labels: np.ndarray   # (n,) object str class name ("" when unlabelled)
    splits: np.ndarray   # (n,) object str
    sims: np.ndarray     # (n,) float32 inner product with the query

    def __len__(self) -> int:
        return len(self.row_ids)

    def records(self) -> list[dict]:
        """One dict per hit (JSON-ready)."""
        return [{"rank": i + 1, "row_id": int(r), "id": str(d), "source": str(s),
                 "label": str(lab), "split": str(sp), "similarity": float(sim)}
                for i, (r, d, s, lab, sp, sim) in enumerate(zip(
                    self.row_ids, self.ids, self.sources, self.labels, self.splits, self.sims,
                    strict=True))]

    def table(self) -> pa.Table:
        return pa.table({"rank": pa.array(np.arange(1, len(self) + 1), pa.int32()),
                         "row_id": pa.array(self.row_ids, pa.int64()),
                         "id": pa.array(self.ids.tolist(), pa.string()),
                         "source": pa.array(self.sources.tolist(), pa.string()),
                         "label": pa.array(self.labels.tolist(), pa.string()),
                         "split": pa.array(self.splits.tolist(), pa.string()),
                         "similarity": pa.array(self.sims, pa.float32())})

    def to_text(self) -> str:
        """A plain aligned table for the terminal."""
        lines = [f"{'rank':>4}  {'similarity':>10}  {'row_id':>8}  {'label':<16} {'split':<8} id"]
        for rec in self.records():
            source = f"  ({rec['source']})" if rec["source"] and rec["source"] != rec["id"] else ""
            lines.append(f"{rec['rank']:>4}  {rec['similarity']:>10.4f}  {rec['row_id']:>8}  "
                         f"{rec['label']:<16} {rec['split']:<8} {rec['id']}{source}")
        return "\n".join(lines)

    def write(self, path: Path | str) -> None:
        """Write as parquet (.parquet) or JSON (.json)."""
        path = Path(path)
        if path.suffix == ".parquet":
            pq.write_table(self.table(), path)
        elif path.suffix == ".json":
            path.write_text(json.dumps(self.records(), indent=1))
        else:
            raise BadInput(f"cannot write search hits to {path}",
                           "name a .parquet or .json file")


def search(store_path: Path | str, query: Query, *, k: int = 10, split: str | None = None,
           label: str | None = None, index_split: str | None = None,
           model: str | None = None, pretrained: str | None = None,
           checkpoint: Path | str | None = None, device: str | None = "auto") -> Hits:
    """The `k` stored rows nearest to `query` (of `split`, with class `label`), best first.

    Uses the store's search index of `index_split` (default: the index of `split` when one was
    built, else of all rows), first adding any rows appended since it was saved.
    """
    if k < 1:
        raise BadInput(f"asked for {k} results", "ask for at least one")
    store = Store.open(store_path)
    label_index = None
    if label is not None:
        if label not in store.classes:
            shown = ", ".join(map(repr, store.classes[:5]))
            more = f" and {len(store.classes) - 5} more" if len(store.classes) > 5 else ""
            raise BadInput(f"store {store_path} has no class {label!r}",
                           f"give `label=` one of its classes: {shown}{more}")
        label_index = store.classes.index(label)
    if index_split is None and split is not None and (index_dir(store.path, split) / META).exists():
        index_split = split
    require(store.path, index_split)
    index = StoreIndex.ensure(store, split=index_split, show_progress=False)
    x = query.vector(store, model=model, pretrained=pretrained, checkpoint=checkpoint,
                     device=device)
    sims, row_ids = index.search(x, k, label=label_index, split=split)
    found = row_ids[0] >= 0
    return describe(store, row_ids[0][found], sims[0][found])


def describe(store: Store, row_ids: np.ndarray, sims: np.ndarray) -> Hits:
    """`Hits` for row ids (best first) with their similarities, read from the store."""
    rows = store.select(row_ids=row_ids, columns=HIT_COLUMNS, features_dtype=None)
    at = {int(r): i for i, r in enumerate(rows.row_ids)}
    pick = np.array([at[int(r)] for r in row_ids], dtype=np.int64)
    names = np.asarray([*store.classes, ""], dtype=object)
    sources = rows.sources[pick] if rows.sources is not None else np.full(len(pick), "", object)
    return Hits(row_ids=np.asarray(row_ids, np.int64), ids=rows.ids[pick],
                sources=np.asarray([s or "" for s in sources], dtype=object),
                labels=names[rows.labels[pick]], splits=rows.splits[pick],
                sims=np.asarray(sims, np.float32))
