"""`Cache`: a Tip-Adapter key-value cache: keys, labels, store row ids, classes, text, alpha/beta.

Its contents are an immutable `state.CacheState`; its directory format (generations, key
segments, locking) is `files`; shots are sampled by `shots.sample_shots` and the text classifier
is resolved by `text`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInput
from ..method.adapter import TipAdapter
from ..method.adapter import top_k as take_top_k
from ..method.affinity import WEIGHTINGS
from ..method.finetune import FinetuneResult, finetune
from ..method.gda import GDAStats, search_alpha
from ..method.index import KeyIndex
from ..method.tune import TuneResult, search
from ..provenance import Provenance
from ..rows import Rows
from ..store.store import Store
from . import files as cache_files
from .files import META, CacheDir
from .labels import class_map, relabel
from .shots import check_store, new_shots, row_ids_of, sample_shots, stored_shots
from .state import CacheInfo, CacheState, Keys, Segment, new_cache_id
from .text import TextInput, check_text, new_class_text, resolve_text

if TYPE_CHECKING:
    from ..encode.model import Encoder

__all__ = ["META", "Cache", "CacheInfo", "CacheState", "sample_shots"]

log = logging.getLogger(__name__)


class Cache:
    """Few-shot keys, their labels and store row ids, class names, text classifier, alpha/beta.

    A cache is its current `CacheState` (replaced, never changed, by every edit) plus the
    `CacheDir` generation it was loaded from or saved to; the adapter and the FAISS index are
    kept with the state (keys) they were made for.
    """

    def __init__(self, state: CacheState, directory: CacheDir | None = None) -> None:
        self.state = state
        self._dir = directory
        self._index: tuple[Keys, KeyIndex] | None = None
        self._adapter: tuple[CacheState, TipAdapter] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the FAISS index and adapter (Ray workers reload them lazily)."""
        return {**self.__dict__, "_index": None, "_adapter": None}

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Rows, classes: Sequence[str], provenance: Provenance, *,
                  text: np.ndarray | None = None, **info: Any) -> Cache:
        """A cache whose keys are exactly `rows` (features, labels, row ids)."""
        if rows.row_ids is None:
            raise BadInput("cache rows need store row ids", "append them to a store first")
        meta = CacheInfo(classes=list(classes), provenance=provenance,
                         **{"cache_id": new_cache_id(), **info})
        order = np.lexsort((rows.row_ids, rows.labels))
        return cls(CacheState.make(rows.features[order], rows.labels[order],
                                   rows.row_ids[order], meta, text))

    @classmethod
    def build(cls, store: Store, shots: int | None, *, seed: int = 0, text: TextInput = None,
              templates: str | None = None, index_spec: str = "Flat", index_params: str = "",
              split: str = "train", encoder: Encoder | None = None,
              weighting: str = "balanced") -> Cache:
        """Sample `shots` labelled rows per class of `split` (None: all) into a new cache.

        Without `text` and `templates` the cache has no text classifier: its methods are
        "cache" and "gda". GDA's statistics are fitted on the shots' stored augmented views
        when the store has them (as the official code does), else on the keys.

        `text` is a (C, D) array or a saved text-classifier file (its encoder and classes must
        match the store); with `templates` the class prompts are encoded by `encoder` (default:
        the store's encoder, loaded by name).
        """
        if shots is not None and shots <= 0:
            raise BadInput(f"shots must be a positive number or None (all), got {shots}",
                           "give `shots=` K >= 1")
        rows = store.labelled(split=split)
        if len(rows) == 0:
            raise BadInput(f"store {store.path} has no labelled rows in split '{split}'",
                           "add labelled rows to that split or choose another `split=`")
        classes = list(store.classes)
        chosen = rows.take(sample_shots(rows.labels, rows.row_ids, len(classes), shots, seed))
        resolved = resolve_text(text, templates, classes, store.provenance, encoder)
        cache = cls.from_rows(
            chosen, classes, store.provenance, text=resolved.weights,
            store_id=store.store_id, store_generation=int(store.generation),
            store_path=str(Path(store.path).resolve()), shots=shots, seed=seed, split=split,
            index_spec=index_spec, index_params=index_params, templates=resolved.templates,
            text_source=resolved.source, weighting=weighting,
        )
        stats, fit = _gda_update(GDAStats.empty(len(classes), store.provenance.dim), store,
                                 chosen.row_ids, chosen.labels, chosen.features)
        cache.state = replace(cache.state, gda=stats,
                              info=replace(cache.info, gda_fit=fit))
        if index_params:
            cache.index.set_params(index_params)  # bad parameters fail before anything is saved
        log.info("cache: %d keys over %d classes from %s", len(cache), len(classes), store.path)
        return cache

    # --- views ------------------------------------------------------------------------
    @property
    def info(self) -> CacheInfo:
        """What `cache.json` records: classes, provenance, alpha/beta, history ..."""
        return self.state.info

    @property
    def text(self) -> np.ndarray | None:
        """(C, D) float32 text classifier, or None."""
        return self.state.text

    @property
    def keys(self) -> np.ndarray:
        """(M, D) float32 keys, in insertion order (base build sorted by class, then adds)."""
        return self.state.keys.keys

    @property
    def labels(self) -> np.ndarray:
        """(M,) int64 class index of each key."""
        return self.state.keys.labels

    @property
    def row_ids(self) -> np.ndarray:
        """(M,) int64 store row id of each key (the FAISS ids)."""
        return self.state.keys.row_ids

    @property
    def path(self) -> Path | None:
        """The cache directory it was loaded from or last saved to (None: never saved)."""
        return None if self._dir is None else self._dir.path

    @property
    def generation(self) -> int:
        """The generation of `path` this cache was loaded as or last saved as (0: none)."""
        return 0 if self._dir is None else self._dir.generation

    def __len__(self) -> int:
        return len(self.state.keys)

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

    def shots_spread(self) -> str:
        """Shots per class as "min / median / max" (unequal: the balanced weights matter)."""
        counts = self.class_counts()
        return f"{counts.min()} / {np.median(counts):g} / {counts.max()}"

    def stale_tuning(self) -> str | None:
        """A one-line warning when alpha/beta were tuned for an earlier set of shots."""
        return self.info.stale_tuning()

    # --- query path -------------------------------------------------------------------
    @property
    def index(self) -> KeyIndex:
        """The FAISS index over the keys (ids = store row ids), loaded or built on first use."""
        keys = self.state.keys
        if self._index is None or self._index[0] is not keys:
            if self._dir is not None and self._dir.holds_index_of(keys):
                index = self._dir.load_index(keys)
            else:
                index = KeyIndex.build(keys.keys, keys.row_ids, spec=self.info.index_spec)
            if self.info.index_params:
                index.set_params(self.info.index_params)
            self._index = (keys, index)
        return self._index[1]

    def _carry_index(self, state: CacheState, change: Callable[[KeyIndex], None]) -> None:
        """Adopt `state`, keeping a live index by applying `change` to it (not rebuilding)."""
        live = self._index is not None and self._index[0] is self.state.keys
        if live:
            change(self._index[1])
            self._index = (state.keys, self._index[1])
        self.state = state

    def adapter(self) -> TipAdapter:
        """The TipAdapter for this cache (text, keys, labels, alpha, beta and the index)."""
        state = self.state
        if self._adapter is None or self._adapter[0] is not state:
            adapter = TipAdapter(
                state.keys.keys, state.keys.labels, len(state.info.classes), text=state.text,
                alpha=state.info.alpha, beta=state.info.beta, index=lambda: self.index,
                row_ids=state.keys.row_ids, weighting=state.info.weighting,
                gda_stats=state.gda, gda_alpha=state.info.gda_alpha,
            )
            self._adapter = (state, adapter)
        return self._adapter[1]

    def logits(self, x: np.ndarray, method: str = "tip", mode: str = "exact",
               k: int = 64) -> np.ndarray:
        """(B, C) logits of the queries `x`; `method` is zero-shot, cache or tip (tip-f = tip)."""
        return self.logits_by_method(x, [method], mode=mode, k=k)[method]

    def logits_by_method(self, x: np.ndarray, methods: Sequence[str], mode: str = "exact",
                         k: int = 64) -> dict[str, np.ndarray]:
        """Logits of several methods at once (exact mode shares their text and cache terms)."""
        if "tip-f" in methods and self.method != "tip-f":
            raise BadInput("this cache is not fine-tuned", "fine-tune it first (`finetune`)")
        self._check_query(x)
        plain = ["tip" if m == "tip-f" else m for m in methods]
        got = self.adapter().logits_by_method(x, list(dict.fromkeys(plain)), mode=mode, k=k)
        return {m: got[p] for m, p in zip(methods, plain, strict=True)}

    def classify(self, x: np.ndarray, top_k: int = 5, mode: str = "exact", k: int = 64):
        """Top-k predictions (class indices, softmax probabilities) of the queries `x`."""
        return take_top_k(self.logits(x, mode=mode, k=k), top_k)

    def _check_query(self, x: np.ndarray) -> None:
        if np.ndim(x) != 2 or np.shape(x)[1] != self.provenance.dim:
            raise BadInput(f"queries must be (B, {self.provenance.dim}) features from "
                           f"{self.provenance.describe()}, got shape {np.shape(x)}")

    # --- jobs -------------------------------------------------------------------------
    def rows_of(self, store: Store, split: str, *, with_views: bool = False) -> Rows:
        """The labelled `split` rows of `store`, relabelled to this cache's class indices."""
        self.provenance.check_compatible(store.provenance, f"rows of store {store.path}")
        rows = store.labelled(split=split, with_views=with_views)
        if len(rows) == 0:
            raise BadInput(f"store {store.path} has no labelled '{split}' rows",
                           "add some or choose another `split=`")
        mapping = class_map(self.classes, store.classes)
        return replace(rows, labels=relabel(mapping, rows.labels, store.classes, split))

    def tune(self, val: Rows, *, scale: tuple[float, float] = (7.0, 3.0),
             steps: tuple[int, int] = (200, 20), source: tuple[str, str] | None = None
             ) -> TuneResult:
        """Run the official alpha/beta search and GDA's alpha search on `val` rows and adopt
        their choices; `source` (store path, split) of the rows is remembered for `retune`.

        Without a text classifier only beta is searched (alpha does not change the cache
        term's argmax) and GDA's alpha stays 1.
        """
        _check_grid(scale, steps)
        result = search(val.features, val.labels, self.keys, self.labels, self.text,
                        num_classes=self.num_classes, weighting=self.info.weighting,
                        scale=scale, steps=steps)
        adapter = self.adapter()
        clip = None if self.text is None else adapter.text_logits(val.features)
        chosen = search_alpha(clip, adapter.gda_term(val.features), val.labels)
        info = self.info.with_record({
            "job": "tune", "alpha": result.alpha, "beta": result.beta,
            "val_acc": result.val_acc, "n_val": result.n_val, "scale": list(scale),
            "steps": list(steps), "gda_alpha": chosen.alpha, "gda_val_acc": chosen.val_acc},
            alpha=float(result.alpha), beta=float(result.beta), gda_alpha=float(chosen.alpha),
            tuned_version=self.info.key_version)
        if source is not None:
            info = replace(info, tune_source={"store": str(Path(source[0]).resolve()),
                                              "split": source[1]})
        self.state = replace(self.state, info=info)
        return result

    def retune(self, store: Store | None = None, split: str | None = None) -> TuneResult:
        """`tune` again on the validation rows of the last tune (or `store`/`split`), on the
        grid it used; e.g. after `add_shots`."""
        last = self.info.tune_source or {}
        if store is None and "store" not in last:
            raise BadInput("this cache was never tuned on a store, so its validation rows are "
                           "unknown", "give them: `retune.store=` [`retune.split=`]")
        store = store if store is not None else Store.open(last["store"])
        split = split or last.get("split", "val")
        record = next((r for r in reversed(self.info.history) if r.get("job") == "tune"), {})
        return self.tune(self.rows_of(store, split),
                         scale=tuple(record.get("scale", (7.0, 3.0))),
                         steps=tuple(record.get("steps", (200, 20))),
                         source=(str(store.path), split))

    def finetune(self, store: Store, val: Rows, *, epochs: int = 20, seed: int = 0,
                 device: str | None = None, scale: tuple[float, float] = (7.0, 3.0),
                 steps: tuple[int, int] = (200, 20)) -> FinetuneResult:
        """Tip-Adapter-F on the stored views of this cache's shots; best epoch on `val`."""
        if self.text is None:
            raise BadInput("fine-tuning needs a text classifier",
                           "rebuild the cache with `text=` or `templates=`")
        _check_grid(scale, steps)
        views = self.shot_views(store)
        result = finetune(self.keys, self.labels, self.text, views, self.labels, val.features,
                          val.labels, self.alpha, self.beta, epochs=epochs, seed=seed,
                          device=device, scale=scale, steps=steps,
                          weighting=self.info.weighting)
        record = {"job": "finetune", "epochs": epochs, "seed": seed, "n_val": len(val),
                  "initial_alpha": self.alpha, "initial_beta": self.beta, **result.to_json()}
        state = self.state.with_keys(result.keys, method="tip-f")
        self.state = replace(state, info=state.info.with_record(
            record, alpha=float(result.tuned.alpha), beta=float(result.tuned.beta),
            tuned_version=self.info.key_version))
        return result

    def open_store(self, path: Path | str | None = None) -> Store:
        """This cache's store: the one at `path`, by default where the cache records it."""
        if path is None:
            if not self.info.store_path:
                raise BadInput("the cache does not record its store", "pass `store=`")
            path = self.info.store_path
        store = Store.open(path)
        check_store(store, self.store_id)
        return store

    def new_shots(self, store: Store, *, split: str = "train",
                  ids: Sequence[str] | None = None) -> Rows:
        """Labelled `split` rows of this cache's `store` to add as shots: the rows `ids` (each
        must be one), or with no ids every one that is not a key yet."""
        return new_shots(store, self.row_ids, self.store_id, split, ids)

    def key_row_ids(self, store: Store, ids: Sequence[str]) -> np.ndarray:
        """The store row ids (as `remove_shots` takes them) of the rows `ids` of `store`."""
        return row_ids_of(store, self.store_id, ids)

    def shot_views(self, store: Store) -> np.ndarray:
        """(M, V, D) stored augmented views of the shots, in key order, from their store."""
        _, views = stored_shots(store, self.row_ids, self.provenance.dim, self.store_id,
                                with_views=True)
        return views

    def training_free(self, store: Store) -> Cache:
        """For a fine-tuned cache: the Tip-Adapter it started from (store features, alpha/beta
        before fine-tuning), read from the cache's store."""
        if self.method != "tip-f":
            return self
        start = next(r for r in reversed(self.info.history) if r.get("job") == "finetune")
        features, _ = stored_shots(store, self.row_ids, self.provenance.dim, self.store_id,
                                   with_views=False)
        info = replace(self.info, method="tip", alpha=start["initial_alpha"],
                       beta=start["initial_beta"], history=())
        return Cache(CacheState.make(features, self.labels, self.row_ids, info, self.text,
                                     self.state.gda))

    # --- changes ----------------------------------------------------------------------
    def set_params(self, alpha: float, beta: float, record: dict[str, Any] | None = None) -> None:
        """Set alpha and beta (after a search); `record` is kept in the cache's history."""
        info = self.info.with_record(record, alpha=float(alpha), beta=float(beta))
        self.state = replace(self.state, info=info)

    def set_weighting(self, weighting: str) -> None:
        """Weigh the cache term "balanced" (the default) or "sum" (the official formula)."""
        if weighting not in WEIGHTINGS:
            raise BadInput(f"unknown weighting {weighting!r}", f"use {' or '.join(WEIGHTINGS)}")
        self.state = replace(self.state, info=replace(self.info, weighting=weighting))

    def set_keys(self, keys: np.ndarray, method: str = "tip-f") -> None:
        """Replace every key (same order, labels and row ids), e.g. by fine-tuned keys."""
        self.state = self.state.with_keys(keys, method)

    def add_shots(self, rows: Rows, *, classes: Sequence[str] | None = None,
                  text: TextInput = None, encoder: Encoder | None = None,
                  store_generation: int | None = None, store: Store | None = None) -> None:
        """Add labelled rows as keys without rebuilding; new classes extend the vocabulary.

        `rows.labels` index `classes` (default: this cache's classes), which must start with
        this cache's classes; the classes after them become new classes whose text classifier
        rows come from `text` (an array or file) or are encoded with the cache's templates by
        `encoder` (default: the cache's encoder, loaded by name). The GDA statistics are
        updated with the rows' views from `store` (default: the cache's store) when fitted on
        views, else with their features. Alpha/beta stay: see `stale_tuning` and `retune`.
        """
        classes = list(self.classes if classes is None else classes)
        if classes[:self.num_classes] != self.classes:
            raise BadInput("the rows' class vocabulary does not extend this cache's classes",
                           "add shots from the store the cache was built from")
        if rows.row_ids is None:
            raise BadInput("shots need store row ids", "append them to the cache's store first")
        if len(rows) == 0:
            raise BadInput("no shots to add", "give labelled rows")
        if (rows.labels < 0).any() or (rows.labels >= len(classes)).any():
            raise BadInput("every shot needs a label of a known class", "label them first")
        if rows.features.shape[1] != self.provenance.dim:
            raise BadInput(f"shots have dim {rows.features.shape[1]}, the cache "
                           f"{self.provenance.dim}", "encode them with the cache's encoder")
        order = np.lexsort((rows.row_ids, rows.labels))
        segment = Segment.of(rows.features[order], rows.labels[order], rows.row_ids[order])
        new = classes[self.num_classes:max(int(rows.labels.max()) + 1, self.num_classes)]
        info, text_rows = self.info, self.text
        if new and text_rows is not None:
            extra = check_text(new_class_text(new, text, self.provenance, info.templates,
                                              info.text_source, encoder),
                               len(new), self.provenance.dim)
            text_rows = np.concatenate([text_rows, extra]).astype(np.float32)
        if new:
            info = replace(info, classes=self.classes + new)
        if store_generation is not None:
            info = replace(info, store_generation=int(store_generation))
        gda, fit = self._gda_changed(store, segment.row_ids, segment.labels, segment.keys,
                                     len(info.classes), +1)
        state = self.state.plus(segment, replace(info, gda_fit=fit), text_rows, gda)
        self._carry_index(state, lambda index: index.add(segment.keys, segment.row_ids))
        if new:
            log.info("cache: new classes %s", ", ".join(new))

    def remove_shots(self, row_ids: Sequence[int] | np.ndarray, store: Store | None = None) -> int:
        """Remove the keys with these store row ids (mislabelled shots); returns how many.

        The GDA statistics lose the shots' views (read from `store`, default: the cache's
        store) or keys, whichever they were fitted on."""
        row_ids = np.unique(np.asarray(row_ids, dtype=np.int64))
        gone = np.isin(self.row_ids, row_ids)
        gda, fit = self._gda_changed(store, self.row_ids[gone], self.labels[gone],
                                     self.keys[gone], self.num_classes, -1)
        state = self.state.without(row_ids, gda)
        state = replace(state, info=replace(state.info, gda_fit=fit))
        # a trained (IVF, PQ) index loses the ids rather than being retrained
        self._carry_index(state, lambda index: index.remove(row_ids))
        return len(row_ids)

    def _gda_changed(self, store: Store | None, row_ids: np.ndarray, labels: np.ndarray,
                     keys: np.ndarray, num_classes: int, sign: int
                     ) -> tuple[GDAStats | None, str | None]:
        """The GDA statistics with shots added (sign +1) or removed (-1), without a refit,
        and what they are fitted on.

        Statistics fitted on views need the shots' views; when the store has none (or is
        gone) the statistics are refitted on the keys instead, and the cache says so."""
        stats, fit = self.state.gda, self.info.gda_fit
        if stats is None:
            return None, fit  # an older cache: the adapter fits GDA on the keys when used
        stats = stats.with_classes(num_classes)
        if fit == "keys":
            return stats.add(keys, labels, sign), fit
        got, used = _gda_update(stats, store or self._own_store(), row_ids, labels, keys, sign)
        if used == "views":
            return got, used
        log.warning("cache: the shots have no stored views: GDA refitted on the keys")
        if sign < 0:
            kept = np.isin(self.row_ids, row_ids, invert=True)
            all_keys, all_labels = self.keys[kept], self.labels[kept]
        else:
            all_keys = np.vstack([self.keys, keys])
            all_labels = np.concatenate([self.labels, labels])
        return GDAStats.fit(all_keys, all_labels, num_classes), "keys"

    def _own_store(self) -> Store | None:
        """The store the cache was built from, when it can still be opened."""
        try:
            return Store.open(self.info.store_path) if self.info.store_path else None
        except (OSError, BadInput):
            return None

    # --- persistence ------------------------------------------------------------------
    def save(self, path: Path | str | None = None) -> Path:
        """Write the next generation to `path` (default: where it was loaded) atomically."""
        if path is None and self._dir is None:
            raise BadInput("this cache has no directory yet", "give a path to save it to")
        target = self._dir.path if path is None else Path(path)
        same = self._dir is not None and target.resolve() == self._dir.path.resolve()
        if self._dir is not None and not same:  # a copy in another directory is another cache
            self.state = replace(self.state, info=replace(self.info, cache_id=new_cache_id()))
        directory, keys = cache_files.save(target, self.state, lambda: self.index,
                                           self._dir if same else None)
        # the same keys, now in files: the live index still holds them
        index = self._index[1] if self._index and self._index[0] is self.state.keys else None
        self.state, self._dir = replace(self.state, keys=keys), directory
        self._index = None if index is None else (keys, index)
        log.info("cache: saved %s generation %d (%d keys)", target, self.generation, len(self))
        return target

    @classmethod
    def load(cls, path: Path | str) -> Cache:
        """Open the current generation of the cache directory `path`."""
        directory, state = cache_files.load(Path(path))
        return cls(state, directory)


def _check_grid(scale: tuple[float, float], steps: tuple[int, int]) -> None:
    """BadInput unless the alpha/beta search grid has positive finite ends and sizes."""
    if not all(np.isfinite(v) and v > 0 for v in scale):
        raise BadInput(f"scale {tuple(scale)} must be two finite numbers > 0",
                       "give `scale=` S_BETA S_ALPHA > 0")
    if not all(int(n) >= 1 for n in steps):
        raise BadInput(f"steps {tuple(steps)} must be two numbers >= 1", "give `steps=` >= 1")


def _gda_update(stats: GDAStats, store: Store | None, row_ids: np.ndarray, labels: np.ndarray,
                features: np.ndarray, sign: int = 1) -> tuple[GDAStats, str]:
    """`stats` with these shots added (sign -1: removed) and what was used: "views" (every
    shot's stored augmented views, each L2-normalised, as the official GDA fits) or "keys"."""
    label_of = dict(zip(row_ids.tolist(), labels.tolist(), strict=True))
    out, seen = stats, 0
    if store is not None and len(row_ids):
        for batch in store.iter_rows(8192, row_ids=row_ids, with_views=True):
            hit = np.isin(batch.row_ids, row_ids)
            if batch.views is None or not batch.views.shape[1]:
                break
            views = batch.views[hit]
            views = views / np.linalg.norm(views, axis=-1, keepdims=True)
            ys = np.array([label_of[r] for r in batch.row_ids[hit].tolist()], dtype=np.int64)
            out = out.add(views.reshape(-1, views.shape[-1]), np.repeat(ys, views.shape[1]),
                          sign)
            seen += int(hit.sum())
    if len(row_ids) and seen == len(row_ids):
        return out, "views"
    return stats.add(features, labels, sign), "keys"
