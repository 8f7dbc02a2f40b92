"""`Cache`: a Tip-Adapter key-value cache kept as a directory of generations.

Layout: `cache.json` names the current generation and is replaced atomically last. It lists
immutable key segments (`keys-g<N>.npz`: keys, labels, row ids), the text classifier
(`text-g<N>.npy`) and the FAISS index (`index-g<N>.faiss`) plus how many segments that index
already holds. `add_shots` writes one small segment and a new JSON, so a cache of a million keys
grows without rewriting its keys or index; segments are merged once the deltas grow past
`COMPACT_FRACTION`. A reader that loaded generation g keeps working while g+1 is written: files
of the previous generation are kept, older ones deleted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from .atomic import atomic_path, write_json
from .errors import BadInput, CorruptData, TipError
from .provenance import Provenance
from .rows import Rows

log = logging.getLogger(__name__)

FORMAT = "tipretrieval-cache"
VERSION = 1
META = "cache.json"
COMPACT_FRACTION = 0.1  # merge the key segments when the added keys exceed this share
MAX_SEGMENTS = 16
_PREFIXES = ("keys-g", "text-g", "index-g")


@dataclass
class CacheInfo:
    """Everything about a cache except its arrays: what `cache.json` records."""

    classes: list[str]
    provenance: Provenance
    alpha: float = 1.0
    beta: float = 1.0
    method: str = "tip"
    store_id: str | None = None
    store_generation: int | None = None
    store_path: str | None = None
    shots: int | None = None  # None: every labelled row
    seed: int = 0
    split: str = "train"
    index_spec: str = "Flat"
    templates: str | None = None  # prompt templates used for the text classifier, if known
    text_source: str | None = None  # text-classifier file the text came from, if any
    history: list[dict[str, Any]] = field(default_factory=list)  # tune/finetune records

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["provenance"] = self.provenance.to_json()
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CacheInfo:
        obj = dict(obj)
        obj["provenance"] = Provenance.from_json(obj["provenance"])
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in names})


@dataclass(frozen=True)
class _Segment:
    """An immutable slice of the keys, in memory and (once saved) in `file`."""

    keys: np.ndarray
    labels: np.ndarray
    row_ids: np.ndarray
    file: str | None = None


def sample_shots(labels: np.ndarray, row_ids: np.ndarray, num_classes: int,
                 shots: int | None, seed: int = 0) -> np.ndarray:
    """Indices of up to `shots` rows per class (all when None), seeded; sorted by class then id.

    Sampling depends only on the labels, row ids and seed, never on row order, so the same
    store and seed give the same shots.
    """
    if shots is not None and shots <= 0:
        raise BadInput(f"shots must be a positive number of rows per class, got {shots}")
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


def _check_text(text: np.ndarray | None, num_classes: int, dim: int) -> np.ndarray | None:
    if text is None:
        return None
    text = np.ascontiguousarray(text, dtype=np.float32)
    if text.shape != (num_classes, dim):
        raise BadInput(f"text classifier has shape {text.shape} but the cache needs "
                       f"({num_classes}, {dim}): build it for the same classes and encoder")
    return text


class Cache:
    """Few-shot keys, their labels and store row ids, class names, text classifier, alpha/beta."""

    def __init__(self, keys: np.ndarray, labels: np.ndarray, row_ids: np.ndarray,
                 info: CacheInfo, text: np.ndarray | None = None) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        row_ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
        if keys.ndim != 2 or keys.shape[1] != info.provenance.dim:
            raise BadInput(f"keys must be (M, {info.provenance.dim}), got {keys.shape}")
        if not (len(labels) == len(row_ids) == len(keys)):
            raise BadInput("keys, labels and row ids need one entry per key")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(info.classes)):
            raise BadInput(f"key labels must be class indices in [0, {len(info.classes)})")
        if len(np.unique(row_ids)) != len(row_ids):
            raise BadInput("row ids of the cache keys must be unique")
        self.info = info
        self.text = _check_text(text, len(info.classes), info.provenance.dim)
        self._segments = [_Segment(keys, labels, row_ids)]
        self.path: Path | None = None
        self.generation = 0
        self._text_file: str | None = None
        self._index = None
        self._index_file: str | None = None
        self._index_segments = 0  # how many leading segments `_index_file` holds
        self._adapter = None
        self._joined: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the FAISS index and adapter (Ray workers reload them lazily)."""
        return {**self.__dict__, "_index": None, "_adapter": None}

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Rows, classes: Sequence[str], provenance: Provenance, *,
                  text: np.ndarray | None = None, **info: Any) -> Cache:
        """A cache whose keys are exactly `rows` (features, labels, row ids)."""
        if rows.row_ids is None:
            raise BadInput("cache rows need store row ids: append them to a store first")
        meta = CacheInfo(classes=list(classes), provenance=provenance, **info)
        order = np.lexsort((rows.row_ids, rows.labels))
        return cls(rows.features[order], rows.labels[order], rows.row_ids[order], meta, text)

    @classmethod
    def build(cls, store, shots: int | None, *, seed: int = 0, text=None,
              templates: str | None = None, index_spec: str = "Flat",
              split: str = "train", encoder=None) -> Cache:
        """Sample `shots` labelled rows per class of `split` (None: all) into a new cache.

        `text` is a (C, D) array or a saved text-classifier file (its encoder and classes must
        match the store); with `templates` the class prompts are encoded by `encoder` (default:
        the store's encoder, loaded by name).
        """
        if shots is not None and shots <= 0:
            raise BadInput(f"--shots must be a positive number or 'all', got {shots}")
        rows = store.labelled(split=split)
        if len(rows) == 0:
            raise BadInput(f"store {store.path} has no labelled rows in split '{split}': add "
                           f"labelled rows to that split or choose another with --split")
        classes = list(store.classes)
        chosen = rows.take(sample_shots(rows.labels, rows.row_ids, len(classes), shots, seed))
        resolved = _resolve_text(text, templates, classes, store.provenance, encoder)
        cache = cls.from_rows(
            chosen, classes, store.provenance, text=resolved.weights,
            store_id=store.store_id, store_generation=int(store.generation),
            store_path=str(Path(store.path).resolve()), shots=shots, seed=seed, split=split,
            index_spec=index_spec, templates=resolved.templates, text_source=resolved.source,
        )
        log.info("cache: %d keys over %d classes from %s", len(cache), len(classes), store.path)
        return cache

    # --- views ------------------------------------------------------------------------
    def _column(self, name: str) -> np.ndarray:
        """One column over all segments, joined once and kept until the segments change."""
        if name not in self._joined:
            parts = [getattr(s, name) for s in self._segments]
            self._joined[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._joined[name]

    def _all(self) -> _Segment:
        return _Segment(self.keys, self.labels, self.row_ids)

    @property
    def keys(self) -> np.ndarray:
        """(M, D) float32 keys, in insertion order (base build sorted by class, then adds)."""
        return self._column("keys")

    @property
    def labels(self) -> np.ndarray:
        """(M,) int64 class index of each key."""
        return self._column("labels")

    @property
    def row_ids(self) -> np.ndarray:
        """(M,) int64 store row id of each key (the FAISS ids)."""
        return self._column("row_ids")

    def __len__(self) -> int:
        return sum(len(s.labels) for s in self._segments)

    classes = property(lambda self: self.info.classes)
    alpha = property(lambda self: self.info.alpha)
    beta = property(lambda self: self.info.beta)
    method = property(lambda self: self.info.method)
    provenance = property(lambda self: self.info.provenance)
    store_id = property(lambda self: self.info.store_id)
    store_generation = property(lambda self: self.info.store_generation)

    @property
    def num_classes(self) -> int:
        return len(self.info.classes)

    def class_counts(self) -> np.ndarray:
        """Number of keys per class, (C,) int64."""
        return np.bincount(self.labels, minlength=self.num_classes)

    # --- query path -------------------------------------------------------------------
    @property
    def index(self):
        """The FAISS index over the keys (ids = store row ids), loaded or built on first use."""
        if self._index is None:
            from .index import KeyIndex

            if self._index_file is None:
                self._index = KeyIndex.build(self.keys, self.row_ids, spec=self.info.index_spec)
                self._index_segments = len(self._segments)
            else:
                path = self.path / self._index_file
                if not path.exists():
                    raise TipError(f"cache {self.path} moved on two generations past the one "
                                   f"loaded (g{self.generation}): load it again")
                index = KeyIndex.load(path)
                for seg in self._segments[self._index_segments:]:
                    index.add(seg.keys, seg.row_ids)
                self._index = index
        return self._index

    def adapter(self):
        """The TipAdapter for this cache (text, keys, labels, alpha, beta and the index)."""
        if self._adapter is None:
            from .adapter import TipAdapter

            self._adapter = TipAdapter(
                self.keys, self.labels, self.num_classes, text=self.text, alpha=self.alpha,
                beta=self.beta, index=self.index, row_ids=self.row_ids,
            )
        return self._adapter

    def logits(self, x: np.ndarray, method: str = "tip", mode: str = "exact",
               k: int = 64) -> np.ndarray:
        """(B, C) logits of the queries `x`; `method` is zero-shot, cache or tip (tip-f = tip)."""
        if method == "tip-f":
            if self.method != "tip-f":
                raise BadInput("this cache is not fine-tuned: run `tipretrieval finetune` first")
            method = "tip"
        self._check_query(x)
        return self.adapter().logits(x, method=method, mode=mode, k=k)

    def classify(self, x: np.ndarray, top_k: int = 5, mode: str = "exact", k: int = 64):
        """Top-k predictions (class indices, softmax probabilities) of the queries `x`."""
        from .adapter import top_k as take_top_k

        return take_top_k(self.logits(x, mode=mode, k=k), top_k)

    def _check_query(self, x: np.ndarray) -> None:
        if np.ndim(x) != 2 or np.shape(x)[1] != self.provenance.dim:
            raise BadInput(f"queries must be (B, {self.provenance.dim}) features from "
                           f"{self.provenance.describe()}, got shape {np.shape(x)}")

    # --- jobs -------------------------------------------------------------------------
    def rows_of(self, store, split: str, *, with_views: bool = False) -> Rows:
        """The labelled `split` rows of `store`, relabelled to this cache's class indices."""
        from .evaluate import class_map, relabel

        self.provenance.check_compatible(store.provenance, f"rows of store {store.path}")
        rows = store.labelled(split=split, with_views=with_views)
        if len(rows) == 0:
            raise BadInput(f"store {store.path} has no labelled '{split}' rows: add some or "
                           "choose another --split")
        mapping = class_map(self.classes, store.classes)
        return replace(rows, labels=relabel(mapping, rows.labels, store.classes, split))

    def tune(self, val: Rows, *, scale: tuple[float, float] = (7.0, 3.0),
             steps: tuple[int, int] = (200, 20)):
        """Run the official alpha/beta search on `val` rows and adopt its choice."""
        from .tune import search

        if self.text is None:
            raise BadInput("tuning needs a text classifier: rebuild with --text or --templates")
        result = search(val.features, val.labels, self.keys, self.labels, self.text,
                        scale=scale, steps=steps)
        self.set_params(result.alpha, result.beta, {
            "job": "tune", "alpha": result.alpha, "beta": result.beta,
            "val_acc": result.val_acc, "n_val": result.n_val, "scale": list(scale),
            "steps": list(steps)})
        return result

    def evaluate(self, store, *, split: str = "test", **options: Any):
        """Top-1/top-5 table of each method on the labelled `split` rows of `store`."""
        from .evaluate import evaluate

        return evaluate(self, store, split=split, **options)

    def finetune(self, store, val: Rows, *, epochs: int = 20, seed: int = 0,
                 device: str | None = None, scale: tuple[float, float] = (7.0, 3.0),
                 steps: tuple[int, int] = (200, 20)):
        """Tip-Adapter-F on the stored views of this cache's shots; best epoch on `val`."""
        from .finetune import finetune

        if self.text is None:
            raise BadInput("fine-tuning needs a text classifier: rebuild with --text/--templates")
        views = self.shot_views(store)
        result = finetune(self.keys, self.labels, self.text, views, self.labels, val.features,
                          val.labels, self.alpha, self.beta, epochs=epochs, seed=seed,
                          device=device, scale=scale, steps=steps)
        self.set_keys(result.keys, method="tip-f")
        self.set_params(result.tuned.alpha, result.tuned.beta, {
            "job": "finetune", "epochs": epochs, "seed": seed, "n_val": len(val),
            "initial_alpha": self.alpha, "initial_beta": self.beta, **result.to_json()})
        return result

    def shot_views(self, store) -> np.ndarray:
        """(M, V, D) stored augmented views of the shots, in key order, from their store."""
        _, views = self._shot_features(store, with_views=True)
        return views

    def training_free(self, store) -> Cache:
        """For a fine-tuned cache: the Tip-Adapter it started from (store features, alpha/beta
        before fine-tuning), read from the cache's store."""
        if self.method != "tip-f":
            return self
        start = next(r for r in reversed(self.info.history) if r.get("job") == "finetune")
        features, _ = self._shot_features(store, with_views=False)
        info = replace(self.info, method="tip", alpha=start["initial_alpha"],
                       beta=start["initial_beta"], history=[])
        return Cache(features, self.labels, self.row_ids, info, self.text)

    def _shot_features(self, store, with_views: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored features (M, D) and views (M, V, D) or None of the shots, in key order."""
        if self.store_id is not None and store.store_id != self.store_id:
            raise BadInput(f"store {store.path} is not the store this cache was built from "
                           f"(id {self.store_id}): pass that store")
        wanted = self.row_ids
        features = np.zeros((len(wanted), self.provenance.dim), dtype=np.float32)
        views: np.ndarray | None = None
        found = np.zeros(len(wanted), dtype=bool)
        for batch in store.iter_rows(8192, with_views=with_views):
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
                                   f"{batch.views.shape[1]}): extract them with the same --views")
                views[pos] = batch.views[hit]
        if not found.all():
            what = "augmented views" if with_views else "rows"
            fix = ("extract the training images with --views V (e.g. 10) to fine-tune"
                   if with_views else "the store lost rows: rebuild the cache")
            raise BadInput(f"{int((~found).sum())} of {len(wanted)} shots have no stored {what}"
                           f" in {store.path}: {fix}")
        return features, views

    # --- changes ----------------------------------------------------------------------
    def set_params(self, alpha: float, beta: float, record: dict[str, Any] | None = None) -> None:
        """Set alpha and beta (after a search); `record` is kept in the cache's history."""
        self.info = replace(self.info, alpha=float(alpha), beta=float(beta))
        if record is not None:
            self.info.history.append(record)
        self._adapter = None

    def set_keys(self, keys: np.ndarray, method: str = "tip-f") -> None:
        """Replace every key (same order, labels and row ids), e.g. by fine-tuned keys."""
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        if keys.shape != self.keys.shape:
            raise BadInput(f"new keys have shape {keys.shape}, the cache has {self.keys.shape}")
        whole = self._all()
        self._segments = [_Segment(keys, whole.labels, whole.row_ids)]
        self.info = replace(self.info, method=method)
        self._reset_index()

    def add_shots(self, rows: Rows, *, classes: Sequence[str] | None = None,
                  text=None, encoder=None, store_generation: int | None = None) -> None:
        """Add labelled rows as keys without rebuilding; new classes extend the vocabulary.

        `rows.labels` index `classes` (default: this cache's classes), which must start with
        this cache's classes; the classes after them become new classes whose text classifier
        rows come from `text` (an array or file) or are encoded with the cache's templates by
        `encoder` (default: the cache's encoder, loaded by name).
        """
        classes = list(self.classes if classes is None else classes)
        if classes[:self.num_classes] != self.classes:
            raise BadInput("the rows' class vocabulary does not extend this cache's classes: "
                           "add shots from the store the cache was built from")
        if rows.row_ids is None:
            raise BadInput("shots need store row ids: append them to the cache's store first")
        if len(rows) == 0:
            raise BadInput("no shots to add: give labelled rows")
        if (rows.labels < 0).any() or (rows.labels >= len(classes)).any():
            raise BadInput("every shot needs a label of a known class: label them first")
        if rows.features.shape[1] != self.provenance.dim:
            raise BadInput(f"shots have dim {rows.features.shape[1]}, the cache "
                           f"{self.provenance.dim}: encode them with the cache's encoder")
        clash = np.isin(rows.row_ids, self.row_ids)
        if clash.any() or len(np.unique(rows.row_ids)) != len(rows):
            dup = rows.row_ids[clash][:5] if clash.any() else rows.row_ids[:5]
            raise BadInput(f"row ids {dup.tolist()} are already keys of the cache (or repeated):"
                           " remove them first or leave them out")
        used = int(rows.labels.max()) + 1
        new = classes[self.num_classes:max(used, self.num_classes)]
        if new and self.text is not None:
            extra = _check_text(_new_class_text(self.info, new, text, encoder), len(new),
                                self.provenance.dim)
            self.text = np.concatenate([self.text, extra]).astype(np.float32)
            self._text_file = None
        if new:
            self.info = replace(self.info, classes=self.classes + new)
            log.info("cache: new classes %s", ", ".join(new))
        order = np.lexsort((rows.row_ids, rows.labels))
        seg = _Segment(np.ascontiguousarray(rows.features[order], dtype=np.float32),
                       rows.labels[order].astype(np.int64), rows.row_ids[order].astype(np.int64))
        self._segments.append(seg)
        self._joined = {}
        self._adapter = None
        if self._index is not None:
            self._index.add(seg.keys, seg.row_ids)
        if store_generation is not None:
            self.info = replace(self.info, store_generation=int(store_generation))

    def remove_shots(self, row_ids: Sequence[int] | np.ndarray) -> int:
        """Remove the keys with these store row ids (mislabelled shots); returns how many."""
        row_ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
        missing = row_ids[~np.isin(row_ids, self.row_ids)]
        if len(missing):
            raise BadInput(f"row ids {missing[:5].tolist()} are not keys of this cache: "
                           "check the ids (tipretrieval eval/inspect lists them)")
        whole = self._all()
        keep = ~np.isin(whole.row_ids, row_ids)
        index = self._index
        self._segments = [_Segment(whole.keys[keep], whole.labels[keep], whole.row_ids[keep])]
        self._reset_index()
        if index is not None:  # keep a trained (IVF, PQ) index rather than retrain it
            index.remove(row_ids)
            self._index = index
        return int((~keep).sum())

    def _reset_index(self) -> None:
        self._index = None
        self._index_file = None
        self._index_segments = 0
        self._adapter = None
        self._joined = {}

    # --- persistence ------------------------------------------------------------------
    def save(self, path: Path | str | None = None) -> Path:
        """Write the next generation to `path` (default: where it was loaded) atomically."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise BadInput("this cache has no directory yet: give a path to save it to")
        target.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target / ".cache.lock")):
            current = _read_meta(target) if (target / META).exists() else None
            same = self.path is not None and target.resolve() == self.path.resolve()
            if same and current is not None and current["generation"] != self.generation:
                raise TipError(f"cache {target} changed since it was loaded (generation "
                               f"{current['generation']}, loaded {self.generation}): load it "
                               "again and repeat the change")
            if not same:
                self._forget_files()
            gen = (current["generation"] if current else 0) + 1
            files = self._write_files(target, gen)
            meta = {"format": FORMAT, "version": VERSION, "generation": gen,
                    **self.info.to_json(), "num_keys": len(self), "files": files}
            write_json(target / META, meta)
            self.path, self.generation = target, gen
            _collect_garbage(target, files, current["files"] if current else None)
        log.info("cache: saved %s generation %d (%d keys)", target, gen, len(self))
        return target

    def _forget_files(self) -> None:
        self._segments = [replace(s, file=None) for s in self._segments]
        self._text_file = None
        self._index_file = None
        self._index_segments = 0

    def _write_files(self, target: Path, gen: int) -> dict[str, Any]:
        base = len(self._segments[0].labels)
        added = sum(len(s.labels) for s in self._segments[1:])
        unsaved_base = self._segments[0].file is None
        if len(self._segments) > MAX_SEGMENTS or (added > COMPACT_FRACTION * max(base, 1)) \
                or (unsaved_base and len(self._segments) > 1):
            self._segments = [replace(self._all(), file=None)]
            self._index_file = None
            self._index_segments = 0
        self._joined = {}
        for i, seg in enumerate(self._segments):
            if seg.file is None:
                name = f"keys-g{gen}-{i}.npz"
                with atomic_path(target / name) as tmp, open(tmp, "wb") as f:
                    np.savez(f, keys=seg.keys, labels=seg.labels, row_ids=seg.row_ids)
                self._segments[i] = replace(seg, file=name)
        if self.text is not None and self._text_file is None:
            self._text_file = f"text-g{gen}.npy"
            with atomic_path(target / self._text_file) as tmp, open(tmp, "wb") as f:
                np.save(f, self.text)
        if self._index_file is None:
            index = self.index
            self._index_file = f"index-g{gen}.faiss"
            index.save(target / self._index_file)
            self._index_segments = len(self._segments)
        return {"segments": [s.file for s in self._segments],
                "text": self._text_file if self.text is not None else None,
                "index": self._index_file, "index_segments": self._index_segments}

    @classmethod
    def load(cls, path: Path | str) -> Cache:
        """Open the current generation of the cache directory `path`."""
        path = Path(path)
        if not (path / META).is_file():
            raise BadInput(f"{path} is not a cache (no {META}): build one with "
                           "`tipretrieval build STORE --shots K --out CACHE`")
        for _ in range(5):  # a writer may replace the generation while we read it
            meta = _read_meta(path)
            try:
                return cls._from_meta(path, meta)
            except FileNotFoundError:
                if _read_meta(path)["generation"] == meta["generation"]:
                    raise
        raise TipError(f"cache {path} keeps changing while it is read: retry when writes stop")

    @classmethod
    def _from_meta(cls, path: Path, meta: dict[str, Any]) -> Cache:
        files = meta["files"]
        segments = []
        for name in files["segments"]:
            with np.load(path / name) as z:
                segments.append(_Segment(z["keys"], z["labels"], z["row_ids"], name))
        text = np.load(path / files["text"]) if files.get("text") else None
        info = CacheInfo.from_json({k: v for k, v in meta.items()
                                    if k not in ("format", "version", "generation", "files")})
        cache = cls(segments[0].keys, segments[0].labels, segments[0].row_ids, info, text)
        cache._segments = segments
        cache._joined = {}
        if len(segments) > 1 and len(np.unique(cache.row_ids)) != len(cache):
            raise CorruptData(f"cache {path} holds repeated row ids: rebuild it")
        cache.path, cache.generation = path, int(meta["generation"])
        cache._text_file = files.get("text")
        cache._index_file, cache._index_segments = files["index"], int(files["index_segments"])
        if not (path / cache._index_file).exists():
            raise FileNotFoundError(path / cache._index_file)
        return cache


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in `ids` (unique) of the values `wanted` (all present)."""
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids, wanted, sorter=order)]


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as exc:
        raise CorruptData(f"cannot read {path / META} ({exc}): restore or rebuild the cache"
                          ) from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise BadInput(f"{path} holds cache format {meta.get('format')} v{meta.get('version')}"
                       f", this tipretrieval reads {FORMAT} v{VERSION}: rebuild the cache")
    return meta


def _file_names(files: dict[str, Any] | None) -> set[str]:
    if not files:
        return set()
    return {*files["segments"], files["index"], *([files["text"]] if files.get("text") else [])}


def _collect_garbage(path: Path, current: dict[str, Any], previous: dict[str, Any] | None
                     ) -> None:
    """Delete the files that neither the current nor the previous generation uses."""
    keep = _file_names(current) | _file_names(previous)
    for f in path.iterdir():
        if f.name.startswith(_PREFIXES) and f.name not in keep:
            f.unlink(missing_ok=True)


# --- text classifier sources -----------------------------------------------------------
@dataclass(frozen=True)
class _Text:
    """A text classifier and where it came from (templates name, file)."""

    weights: np.ndarray
    templates: str | None = None
    source: str | None = None


def _resolve_text(text, templates: str | None, classes: list[str], provenance: Provenance,
                  encoder=None) -> _Text:
    """The (C, D) text classifier from an array, a saved file, or templates + the encoder."""
    if text is not None and templates is not None:
        raise BadInput("give either a text-classifier file (--text) or --templates, not both")
    if isinstance(text, np.ndarray):
        return _Text(text)
    if text is not None:
        return _text_from_file(Path(text), classes, provenance)
    if templates is not None:
        return _Text(_encode_text(provenance, classes, templates, encoder), templates)
    raise BadInput("a cache needs a text classifier: pass --text FILE (made by `tipretrieval "
                   "text`) or --templates NAME to encode the class prompts")


def _text_from_file(path: Path, classes: list[str], provenance: Provenance) -> _Text:
    """Rows of a saved text classifier, reordered to `classes`; its encoder must match."""
    from .encode.text import TextClassifier

    saved = TextClassifier.load(path, expect=provenance)
    where = {name: i for i, name in enumerate(saved.classes)}
    missing = [c for c in classes if c not in where]
    if missing:
        raise BadInput(f"text classifier {path} lacks classes {missing[:5]}: rebuild it for "
                       "the store's classes (tipretrieval text --store STORE)")
    rows = np.asarray(saved.weights, dtype=np.float32)[[where[c] for c in classes]]
    return _Text(rows, saved.templates, str(path.resolve()))


def _encode_text(provenance: Provenance, classes: list[str], templates: str, encoder=None
                 ) -> np.ndarray:
    """Encode the class prompts of `templates` with the cache's encoder."""
    from .encode import load_encoder
    from .encode.text import load_templates, text_classifier

    if encoder is None:
        if provenance.weights.startswith("sha256:") or provenance.weights == "random" \
                or provenance.encoder in ("external", "synthetic"):
            raise BadInput(f"features come from {provenance.describe()}, which cannot be loaded "
                           "by name: pass the checkpoint (--checkpoint FILE) or a text-classifier"
                           " file (--text FILE)")
        encoder = load_encoder(provenance.encoder, pretrained=provenance.weights)
    provenance.check_compatible(encoder.provenance, "the text encoder's features")
    return np.asarray(text_classifier(encoder, classes, load_templates(templates)),
                      dtype=np.float32)


def _new_class_text(info: CacheInfo, names: list[str], text, encoder=None) -> np.ndarray:
    """Text-classifier rows for new classes: given, or encoded like the cache's other classes."""
    if text is not None:
        return _resolve_text(text, None, names, info.provenance).weights
    if info.templates is None:
        raise BadInput(f"the cache's text classifier came from {info.text_source or 'an array'} "
                       "without templates, so new classes cannot be encoded: pass --text FILE "
                       f"holding text embeddings for {', '.join(names)}")
    return _encode_text(info.provenance, names, info.templates, encoder)
