"""`fit_predict`: a folder of labelled class folders and a folder of new images -> a tuned cache,
predictions with evidence and an HTML report, through the same API the single commands use.

Stages, each skipped when done, so a rerun only does what new images require:
extract the labelled images (train with views, a held-out val split) -> build the cache (text
classifier from the folder names) or add the new shots -> tune alpha/beta on val (and
Tip-Adapter-F) when the cache changed -> extract the new images -> classify them (and val) ->
write the reports. Everything lives under `out`:

    store/ cache/ new-store/ predictions/ report/ val-predictions/ report-val/ fit-predict.json
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ...cache.cache import META, Cache
from ...encode.extract import ExtractOptions, default_workers, extract
from ...encode.model import Encoder
from ...encode.sources import Source, scan_source
from ...errors import BadInput
from ...rows import Rows
from ...store.store import Store
from ...util.atomic import write_json
from ..classify import JOURNAL, ClassifyOptions, Journal, classify_store
from ..report import ReportOptions, ReportResult, build_report
from .holdout import RULE, TRAIN, VAL, plan_holdout

log = logging.getLogger(__name__)

STATE = "fit-predict.json"
VAL_NOTE = ("These validation rows chose alpha/beta (and the Tip-Adapter-F epoch), so their "
            "accuracy is slightly optimistic.")


@dataclass(frozen=True)
class FitPredictOptions:
    """Model-independent choices of a fit-predict run."""

    shots: int | None = None  # per class; None: every labelled train image
    finetune: bool = False
    method: str = "tip"
    templates: str = "tip_imagenet"
    views: int = 10
    epochs: int = 20
    seed: int = 0
    top_k: int = 5
    evidence: int = 3  # cache keys shown behind each prediction (not with zero-shot)
    batch_size: int = 256
    workers: int = field(default_factory=default_workers)
    report: ReportOptions = field(default_factory=ReportOptions)


@dataclass
class FitPredictResult:
    """What one run did (counts of this run) and where everything is."""

    out: str
    labelled_new: int = 0
    val_rows: int = 0
    shots_added: int = 0
    keys: int = 0
    classes: int = 0
    tuned: str = "skipped"  # what happened to alpha/beta, in words
    new_images: int = 0
    predicted: int = 0
    report: ReportResult | None = None
    val_report: ReportResult | None = None
    bad_files: int = 0


def _labelled_source(labelled_dir: str | Path) -> Source:
    source = scan_source(labelled_dir)
    if not source.labelled:
        raise BadInput(f"{labelled_dir} holds no class folders",
                       "put the labelled images in one sub-folder per class (and no files "
                       "beside the folders)")
    return source


def _extract(source: Source, store: Path, encoder: Encoder, split: str, views: int,
             options: FitPredictOptions) -> tuple[int, int]:
    """(encoded, bad files) of one extract into `store`; nothing to do for an empty source."""
    if not source.items:
        return 0, 0
    report = extract(source, store, encoder, ExtractOptions(
        split=split, views=views, batch_size=options.batch_size, workers=options.workers,
        seed=options.seed, progress=False), store / f"extract-report-{split}.json")
    return report.encoded, len(report.bad)


def _new_shots(cache: Cache, store: Store, shots: int | None) -> Rows:
    """Labelled train rows that are not keys yet, at most `shots` keys per class in all."""
    rows = store.labelled(split=TRAIN)
    rows = rows.take(~np.isin(rows.row_ids, cache.row_ids))
    if shots is None or not len(rows):
        return rows
    names = np.asarray(store.classes, dtype=object)[rows.labels]
    have = dict(zip(cache.classes, cache.class_counts().tolist(), strict=True))
    keep, used = [], {}
    for i in np.lexsort((rows.row_ids, rows.labels)):  # oldest rows of each class first
        name = names[i]
        used[name] = used.get(name, have.get(name, 0)) + 1
        if used[name] <= shots:
            keep.append(i)
    return rows.take(np.array(sorted(keep), dtype=np.int64))


def _fit_cache(out: Path, store: Store, encoder: Encoder, options: FitPredictOptions,
               result: FitPredictResult) -> Cache:
    """Build the cache, or add the new labelled train rows to it as shots."""
    path = out / "cache"
    if not (path / META).exists():
        cache = Cache.build(store, options.shots, seed=options.seed,
                            templates=options.templates, encoder=encoder)
        cache.save(path)
        result.shots_added = len(cache)
        return cache
    cache = Cache.load(path)
    if (cache.info.shots, cache.info.templates) != (options.shots, options.templates):
        raise BadInput(f"{out} was fitted with {cache.info.shots or 'all'} shots and templates "
                       f"{cache.info.templates}", "use the same `shots=` and `templates=`, or "
                       "a new `out=`")
    new = _new_shots(cache, store, options.shots)
    if len(new):  # on fine-tuned keys too: `_tune` then restarts from the training-free keys
        cache.add_shots(new, classes=store.classes, encoder=encoder,
                        store_generation=store.generation)
        cache.save(path)
        result.shots_added = len(new)
    return cache


def _tune(out: Path, cache: Cache, store: Store, options: FitPredictOptions,
          result: FitPredictResult) -> Cache:
    """Search alpha/beta (and fine-tune) on val, unless neither the cache nor these options
    changed since the last fit (recorded in `out/fit-predict.json`); returns the fitted cache."""
    state_file = out / STATE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    fit = {"finetune": options.finetune, "epochs": options.epochs, "seed": options.seed}
    if state.get("fitted_generation") == cache.generation and state.get("fit") == fit:
        result.tuned = "unchanged since the last run"
        return cache
    if cache.method == "tip-f":  # refit from the training-free keys, never fine-tune twice
        cache = cache.training_free(store)
        cache.save(out / "cache")
    if not store.split_counts().get(VAL):
        result.tuned = ("skipped: no class has enough images to hold out validation rows "
                        f"(alpha 1, beta 1{'; no Tip-Adapter-F' if options.finetune else ''})")
    else:
        val = cache.rows_of(store, VAL)
        tuned = cache.tune(val)
        cache.save()
        tuned.save_json(cache.path / "tune-grid.json")
        result.tuned = (f"alpha {tuned.alpha:.4g}, beta {tuned.beta:.4g} (val top-1 "
                        f"{tuned.val_acc:.2f}% on {tuned.n_val} rows)")
        if options.finetune:
            fine = cache.finetune(store, val, epochs=options.epochs, seed=options.seed)
            cache.save()
            result.tuned += (f"; Tip-Adapter-F epoch {fine.best_epoch + 1}: alpha "
                             f"{cache.alpha:.4g}, beta {cache.beta:.4g} (val top-1 "
                             f"{fine.tuned.val_acc:.2f}%)")
    write_json(state_file, {"fitted_generation": cache.generation, "fit": fit})
    return cache


def _classify(cache: Cache, store: Path, out: Path, options: ClassifyOptions) -> int:
    """Classify `store` into `out`; an output of other inputs (new images, a changed cache) is
    redone, a killed one resumed. Returns the rows classified."""
    overwrite = False
    if (out / JOURNAL).exists():
        spec = Journal.load(out).spec
        current = Store.open(store)
        overwrite = (spec.cache_generation, spec.store_generation, spec.options) != (
            cache.generation, current.generation, options)
    journal = classify_store(cache.path, store, out, options, overwrite=overwrite,
                             show_progress=False)
    return journal.to_json()["rows"]


def fit_predict(labelled_dir: str | Path, new_dir: str | Path, out: str | Path,
                encoder: Encoder, options: FitPredictOptions | None = None) -> FitPredictResult:
    """Run (or resume) every stage; see the module docstring."""
    options = options or FitPredictOptions()
    out = Path(out)
    # absolute paths: the stores record them as the images' sources, for the report's links
    labelled = _labelled_source(Path(labelled_dir).resolve())
    new = scan_source(Path(new_dir).resolve(), unlabelled=True)
    out.mkdir(parents=True, exist_ok=True)
    result = FitPredictResult(str(out))
    store_path = out / "store"
    holdout = plan_holdout(labelled, store_path)
    log.info("validation hold-out: %d images (%s)", holdout.val_total, RULE)
    for source, split, views in ((holdout.train, TRAIN, options.views),
                                 (holdout.val, VAL, 0)):
        encoded, bad = _extract(source, store_path, encoder, split, views, options)
        result.labelled_new += encoded
        result.bad_files += bad
    store = Store.open(store_path)
    result.val_rows = store.split_counts().get(VAL, 0)
    cache = _fit_cache(out, store, encoder, options, result)
    cache = _tune(out, cache, store, options, result)
    result.keys, result.classes = len(cache), cache.num_classes
    encoded, bad = _extract(new, out / "new-store", encoder, "query", 0, options)
    result.new_images, result.bad_files = encoded, result.bad_files + bad
    classify = ClassifyOptions(top_k=min(options.top_k, cache.num_classes),
                               method=options.method,
                               evidence=0 if options.method == "zero-shot" else options.evidence)
    result.predicted = _classify(cache, out / "new-store", out / "predictions", classify)
    val_link = ()
    if result.val_rows:
        _classify(cache, store_path, out / "val-predictions",
                  replace(classify, split=VAL))
        result.val_report = build_report(
            out / "val-predictions", out / "report-val", store=store_path,
            options=replace(options.report, title="Validation rows (labelled)", notes=(VAL_NOTE,),
                            links=(("new images", "../report/index.html"),)))
        val_link = (("validation report", "../report-val/index.html"),)
    result.report = build_report(
        out / "predictions", out / "report", store=out / "new-store",
        options=replace(options.report, title=f"Predictions for {Path(new_dir).name}",
                        links=val_link))
    return result
