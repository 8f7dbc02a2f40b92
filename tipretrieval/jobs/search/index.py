"""`StoreIndex`: a persisted FAISS index over the rows of a store (or one split), beside it.

It lives in `STORE/search-index/<split or _all>/`: `index-<n>.faiss` (a `KeyIndex`, ids = store
row ids), `rows-<n>.npz` (label and split code of every covered row id, for filtered search) and
`index.json`, replaced atomically last, naming them with the store id and generation they cover.
Appends to the store only add rows, so `update` indexes the rows past `covered` (new rows only)
into the trained index; a store with another id (recreated) is indexed from scratch. Trained
indexes (IVF) learn their lists from an evenly spaced sample of the rows (`choose.train_size`).
One writer at a time (a file lock); readers keep the generation they opened.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from filelock import FileLock

from ...errors import BadInput, CorruptData
from ...method.index import KeyIndex
from ...store.store import Store
from ...util.atomic import atomic_path, write_json
from ...util.progress import progress
from .choose import DEFAULT_BUDGET, choose_index, train_size

log = logging.getLogger(__name__)

INDEX_DIR = "search-index"
META = "index.json"
FORMAT = 1
ALL = "_all"
BATCH = 65_536
COLUMNS = ("features", "labels", "splits", "row_ids")


@dataclass
class IndexInfo:
    """What `index.json` records: the store snapshot covered and the files holding it."""

    store_id: str
    store_generation: int
    spec: str
    split: str | None
    covered: int  # rows with row id < covered were considered (the store's next row id)
    rows: int     # vectors in the index
    number: int   # file generation: index-<number>.faiss, rows-<number>.npz
    params: str = ""
    splits: list[str] = field(default_factory=list)  # split code -> name
    format: int = FORMAT


def index_dir(store_path: Path | str, split: str | None) -> Path:
    """Where the index of `split` (None: all rows) of the store at `store_path` lives."""
    return Path(store_path) / INDEX_DIR / (ALL if split is None else split)


def require(store_path: Path | str, split: str | None) -> Path:
    """The index directory of `split`; BadInput naming `tipretrieval index` when none exists."""
    path = index_dir(store_path, split)
    if not (path / META).exists():
        which, option = ("", "") if split is None else (f" for split {split}",
                                                        f" with `split=` {split}")
        raise BadInput(f"store {store_path} has no search index{which}",
                       f"build it first: `StoreIndex.ensure()`{option}")
    return path


class StoreIndex:
    """A FAISS index of store rows with each covered row's label and split, for filtering."""

    def __init__(self, path: Path, info: IndexInfo, index: KeyIndex, labels: np.ndarray,
                 split_codes: np.ndarray) -> None:
        self.path, self.info, self.index = path, info, index
        self.labels = labels            # (covered,) int32 label of each row id
        self.split_codes = split_codes  # (covered,) int16 code into info.splits

    # --- opening ----------------------------------------------------------------------
    @classmethod
    def load(cls, store_path: Path | str, split: str | None = None) -> StoreIndex:
        """The index last saved for `split` of the store; BadInput when there is none."""
        path = require(store_path, split)
        try:
            info = IndexInfo(**json.loads((path / META).read_text()))
            with np.load(path / f"rows-{info.number}.npz") as z:
                labels, codes = z["labels"], z["splits"]
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise CorruptData(f"search index {path} is damaged ({err})",
                              "rebuild it: `StoreIndex.ensure()` with `rebuild=`") from err
        if info.format > FORMAT:
            raise BadInput(f"search index {path} has format {info.format}, newer than this "
                           f"tipretrieval ({FORMAT}): upgrade tipretrieval")
        index = KeyIndex.load(path / f"index-{info.number}.faiss")
        if info.params:
            index.set_params(info.params)
        return cls(path, info, index, labels, codes)

    @classmethod
    def ensure(cls, store: Store, *, split: str | None = None, spec: str = "auto",
               memory: str = DEFAULT_BUDGET, params: str = "", rebuild: bool = False,
               show_progress: bool = True) -> StoreIndex:
        """The index of `split`, built or brought up to the store's generation (new rows only).

        `spec` is a FAISS factory string or 'auto' (`choose.choose_index`); a different
        explicit spec than the saved index's, `rebuild`, or a recreated store build anew.
        """
        path = index_dir(store.path, split)
        path.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path / ".lock")):
            store = store.refresh()
            current = None if rebuild or not (path / META).exists() else cls.load(store.path,
                                                                                   split)
            if current is not None and (current.info.store_id != store.store_id or
                                        spec not in ("auto", current.info.spec)):
                current = None
            if current is None:
                return cls._build(store, path, split, spec, memory, params, show_progress)
            if params and params != current.info.params:
                current.index.set_params(params)
                current.info.params = params
                write_json(path / META, asdict(current.info))  # files unchanged: safe first
            current._extend(store, show_progress)
            return current

    # --- building ---------------------------------------------------------------------
    @classmethod
    def _build(cls, store: Store, path: Path, split: str | None, spec: str, memory: str,
               params: str, show_progress: bool) -> StoreIndex:
        n = len(store) if split is None else store.split_counts().get(split, 0)
        if n == 0:
            where = "" if split is None else f" in split {split}"
            raise BadInput(f"store {store.path} has no rows{where}",
                           "import rows first or choose another `split=`")
        if spec == "auto":
            spec = choose_index(n, store.dim, memory)
        try:
            inner = faiss.index_factory(store.dim, spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise BadInput(f"bad FAISS index spec {spec!r}: use 'auto' or a factory string "
                           "such as 'Flat', 'IVF1024,Flat', 'IVF4096,SQ8' or 'HNSW32'") from err
        if not inner.is_trained:
            sample = _sample(store, split, n, train_size(spec, n) or n)
            log.info("search index: training %s on %d of %d rows", spec, len(sample), n)
            try:
                inner.train(sample)
            except RuntimeError as err:
                raise BadInput(f"cannot train {spec!r} on {len(sample)} rows: use fewer lists "
                               "or 'auto'") from err
            del sample
        info = IndexInfo(store_id=store.store_id, store_generation=0, spec=spec, split=split,
                         covered=0, rows=0, number=0, params=params)
        made = cls(path, info, KeyIndex(faiss.IndexIDMap2(inner), spec, use_gpu=False),
                   np.zeros(0, np.int32), np.zeros(0, np.int16))
        if params:
            made.index.set_params(params)
        made._extend(store, show_progress)
        return made

    def _extend(self, store: Store, show_progress: bool) -> None:
        """Index the rows with row id >= covered (of the split) and save a new file generation."""
        start, stop = self.info.covered, store.manifest.next_row_id
        if stop <= start:  # no new rows (e.g. new classes only): record the generation
            if self.info.store_generation != store.generation:
                self.info.store_generation = store.generation
                write_json(self.path / META, asdict(self.info))
            return
        labels = np.full(stop, -1, np.int32)
        labels[:start] = self.labels
        codes = np.full(stop, -1, np.int16)
        codes[:start] = self.split_codes
        added = 0
        todo = sum(max(0, min(s.first_row_id + s.rows, stop) - max(s.first_row_id, start))
                   for s in store.manifest.shards)
        with progress(todo, "index", disable=not show_progress) as bar:
            for first in range(start, stop, BATCH):
                rows = store.read_range(first, min(first + BATCH, stop))
                bar.update(len(rows))
                labels[rows.row_ids] = rows.labels
                names, inverse = np.unique(rows.splits.astype(str), return_inverse=True)
                codes[rows.row_ids] = np.array([self._code(n) for n in names])[inverse]
                keep = slice(None) if self.info.split is None else rows.splits == self.info.split
                feats, ids = rows.features[keep], rows.row_ids[keep]
                self.index.add(feats, ids)
                added += len(ids)
        self.labels, self.split_codes = labels, codes
        self.info.covered, self.info.rows = stop, self.index.ntotal
        self.info.store_generation = store.generation
        self._save()
        log.info("search index %s: %d rows added, %d in all", self.path, added, self.info.rows)

    def _code(self, split: str) -> int:
        if split not in self.info.splits:
            self.info.splits.append(split)
        return self.info.splits.index(split)

    def _save(self) -> None:
        """New index and row files, then `index.json` (the commit), then drop the old files."""
        old = self.info.number
        self.info.number = old + 1
        self.index.save(self.path / f"index-{self.info.number}.faiss")
        with atomic_path(self.path / f"rows-{self.info.number}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, labels=self.labels, splits=self.split_codes)
        write_json(self.path / META, asdict(self.info))
        for name in (f"index-{old}.faiss", f"rows-{old}.npz"):
            (self.path / name).unlink(missing_ok=True)

    # --- searching --------------------------------------------------------------------
    def selector(self, label: int | None, split: str | None) -> faiss.IDSelector | None:
        """A bitmap selector of the covered rows with `label` and/or `split` (None: no filter)."""
        if label is None and (split is None or split == self.info.split):
            return None
        mask = np.ones(len(self.labels), bool)
        if label is not None:
            mask &= self.labels == label
        if split is not None:
            code = self.info.splits.index(split) if split in self.info.splits else -2
            mask &= self.split_codes == code
        self._bits = np.packbits(mask, bitorder="little")  # kept alive while FAISS reads it
        return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(self._bits))

    def search(self, x: np.ndarray, k: int, *, label: int | None = None,
               split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product (sims (B, k), row ids (B, k); -1 where fewer)."""
        return self.index.search(x, k, selector=self.selector(label, split))


def _sample(store: Store, split: str | None, n: int, size: int) -> np.ndarray:
    """`size` evenly spaced rows (of `split`) as float32, read in bounded batches."""
    picks = np.unique(np.linspace(0, n - 1, size).astype(np.int64))
    out = np.empty((len(picks), store.dim), np.float32)
    seen = got = 0
    for rows in store.iter_rows(BATCH, split=split, columns=COLUMNS):
        local = picks[(picks >= seen) & (picks < seen + len(rows))] - seen
        out[got:got + len(local)] = rows.features[local]
        got += len(local)
        seen += len(rows)
    return out[:got]
