"""`Cache`: a Tip-Adapter key-value cache: keys, labels, store row ids, classes, text, alpha/beta.

Its directory format (generations, key segments, locking) is `cache_files`; shots are sampled by
`shots.sample_shots` and the text classifier is resolved by `cache_text`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, CorruptData, TipError
from ..provenance import Provenance
from ..rows import Rows
from . import files as cache_files
from .files import META, CacheInfo, Files, Segment
from .labels import class_map, relabel
from .shots import sample_shots, stored_shots
from .text import check_text, new_class_text, resolve_text

__all__ = ["META", "Cache", "CacheInfo", "sample_shots"]

log = logging.getLogger(__name__)


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
        self.text = check_text(text, len(info.classes), info.provenance.dim)
        self._segments = [Segment(keys, labels, row_ids)]
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
        return {**self.__dict__, "_index": None, "_adapter": None, "_joined": {}}

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
              templates: str | None = None, index_spec: str = "Flat", index_params: str = "",
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
        resolved = resolve_text(text, templates, classes, store.provenance, encoder)
        cache = cls.from_rows(
            chosen, classes, store.provenance, text=resolved.weights,
            store_id=store.store_id, store_generation=int(store.generation),
            store_path=str(Path(store.path).resolve()), shots=shots, seed=seed, split=split,
            index_spec=index_spec, index_params=index_params, templates=resolved.templates,
            text_source=resolved.source,
        )
        if index_params:
            cache.index.set_params(index_params)  # bad parameters fail before anything is saved
        log.info("cache: %d keys over %d classes from %s", len(cache), len(classes), store.path)
        return cache

    # --- views ------------------------------------------------------------------------
    def _column(self, name: str) -> np.ndarray:
        """One column over all segments, joined once and kept until the segments change."""
        if name not in self._joined:
            parts = [getattr(s, name) for s in self._segments]
            self._joined[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._joined[name]

    def _all(self) -> Segment:
        return Segment(self.keys, self.labels, self.row_ids)

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
            from ..method.index import KeyIndex

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
            if self.info.index_params:
                self._index.set_params(self.info.index_params)
        return self._index

    def adapter(self):
        """The TipAdapter for this cache (text, keys, labels, alpha, beta and the index)."""
        if self._adapter is None:
            from ..method.adapter import TipAdapter

            self._adapter = TipAdapter(
                self.keys, self.labels, self.num_classes, text=self.text, alpha=self.alpha,
                beta=self.beta, index=lambda: self.index, row_ids=self.row_ids,
            )
        return self._adapter

    def logits(self, x: np.ndarray, method: str = "tip", mode: str = "exact",
               k: int = 64) -> np.ndarray:
        """(B, C) logits of the queries `x`; `method` is zero-shot, cache or tip (tip-f = tip)."""
        return self.logits_by_method(x, [method], mode=mode, k=k)[method]

    def logits_by_method(self, x: np.ndarray, methods, mode: str = "exact",
                         k: int = 64) -> dict[str, np.ndarray]:
        """Logits of several methods at once (exact mode shares their text and cache terms)."""
        if "tip-f" in methods and self.method != "tip-f":
            raise BadInput("this cache is not fine-tuned: run `tipretrieval finetune` first")
        self._check_query(x)
        plain = ["tip" if m == "tip-f" else m for m in methods]
        got = self.adapter().logits_by_method(x, list(dict.fromkeys(plain)), mode=mode, k=k)
        return {m: got[p] for m, p in zip(methods, plain, strict=True)}

    def classify(self, x: np.ndarray, top_k: int = 5, mode: str = "exact", k: int = 64):
        """Top-k predictions (class indices, softmax probabilities) of the queries `x`."""
        from ..method.adapter import top_k as take_top_k

        return take_top_k(self.logits(x, mode=mode, k=k), top_k)

    def _check_query(self, x: np.ndarray) -> None:
        if np.ndim(x) != 2 or np.shape(x)[1] != self.provenance.dim:
            raise BadInput(f"queries must be (B, {self.provenance.dim}) features from "
                           f"{self.provenance.describe()}, got shape {np.shape(x)}")

    # --- jobs -------------------------------------------------------------------------
    def rows_of(self, store, split: str, *, with_views: bool = False) -> Rows:
        """The labelled `split` rows of `store`, relabelled to this cache's class indices."""
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
        from ..method.tune import search

        if self.text is None:
            raise BadInput("tuning needs a text classifier: rebuild with --text or --templates")
        result = search(val.features, val.labels, self.keys, self.labels, self.text,
                        scale=scale, steps=steps)
        self.set_params(result.alpha, result.beta, {
            "job": "tune", "alpha": result.alpha, "beta": result.beta,
            "val_acc": result.val_acc, "n_val": result.n_val, "scale": list(scale),
            "steps": list(steps)})
        return result

    def finetune(self, store, val: Rows, *, epochs: int = 20, seed: int = 0,
                 device: str | None = None, scale: tuple[float, float] = (7.0, 3.0),
                 steps: tuple[int, int] = (200, 20)):
        """Tip-Adapter-F on the stored views of this cache's shots; best epoch on `val`."""
        from ..method.finetune import finetune

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
        _, views = stored_shots(store, self.row_ids, self.provenance.dim, self.store_id,
                                with_views=True)
        return views

    def training_free(self, store) -> Cache:
        """For a fine-tuned cache: the Tip-Adapter it started from (store features, alpha/beta
        before fine-tuning), read from the cache's store."""
        if self.method != "tip-f":
            return self
        start = next(r for r in reversed(self.info.history) if r.get("job") == "finetune")
        features, _ = stored_shots(store, self.row_ids, self.provenance.dim, self.store_id,
                                   with_views=False)
        info = replace(self.info, method="tip", alpha=start["initial_alpha"],
                       beta=start["initial_beta"], history=[])
        return Cache(features, self.labels, self.row_ids, info, self.text)

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
        self._segments = [Segment(keys, whole.labels, whole.row_ids)]
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
            extra = check_text(new_class_text(new, text, self.provenance, self.info.templates,
                                              self.info.text_source, encoder),
                               len(new), self.provenance.dim)
            self.text = np.concatenate([self.text, extra]).astype(np.float32)
            self._text_file = None
        if new:
            self.info = replace(self.info, classes=self.classes + new)
            log.info("cache: new classes %s", ", ".join(new))
        order = np.lexsort((rows.row_ids, rows.labels))
        seg = Segment(np.ascontiguousarray(rows.features[order], dtype=np.float32),
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
        self._segments = [Segment(whole.keys[keep], whole.labels[keep], whole.row_ids[keep])]
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
        with cache_files.lock(target):
            same = self.path is not None and target.resolve() == self.path.resolve()
            gen, previous = cache_files.next_generation(target, self.generation if same else None)
            if not same:
                self._forget_files()
            files = self._write_files(target, gen)
            cache_files.commit(target, gen, self.info, len(self), files, previous)
            self.path, self.generation = target, gen
        log.info("cache: saved %s generation %d (%d keys)", target, gen, len(self))
        return target

    def _forget_files(self) -> None:
        self._segments = [replace(s, file=None) for s in self._segments]
        self._text_file = None
        self._index_file = None
        self._index_segments = 0

    def _write_files(self, target: Path, gen: int) -> Files:
        """Save what generation `gen` lacks (new segments, changed text, a new index)."""
        if cache_files.needs_compaction(self._segments):
            self._segments = [replace(self._all(), file=None)]
            self._index_file = None
            self._index_segments = 0
        self._joined = {}
        self._segments = [s if s.file is not None else cache_files.write_segment(target, gen, i, s)
                          for i, s in enumerate(self._segments)]
        if self.text is not None and self._text_file is None:
            self._text_file = cache_files.write_text(target, gen, self.text)
        if self._index_file is None:
            index = self.index
            self._index_file = cache_files.index_name(gen)
            index.save(target / self._index_file)
            self._index_segments = len(self._segments)
        return Files([s.file for s in self._segments],
                     self._text_file if self.text is not None else None,
                     self._index_file, self._index_segments)

    @classmethod
    def load(cls, path: Path | str) -> Cache:
        """Open the current generation of the cache directory `path`."""
        path = Path(path)
        saved = cache_files.load(path)
        first = saved.segments[0]
        cache = cls(first.keys, first.labels, first.row_ids, saved.info, saved.text)
        cache._segments = saved.segments
        cache._joined = {}
        if len(saved.segments) > 1 and len(np.unique(cache.row_ids)) != len(cache):
            raise CorruptData(f"cache {path} holds repeated row ids: rebuild it")
        cache.path, cache.generation = path, saved.number
        cache._text_file = saved.files.text
        cache._index_file, cache._index_segments = saved.files.index, saved.files.index_segments
        return cache
