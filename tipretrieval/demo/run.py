"""The whole pipeline on synthetic CLIP-like data, through the same API the CLI commands call.

store (train with views, val, test, query) -> text classifier file -> build a cache per shot
count -> tune alpha/beta on val -> Tip-Adapter-F -> evaluate on test -> classify the queries;
then add-shots makes a 2-shot cache unbalanced (odd classes get every training image) and both
class weightings are measured before and after, with the stale and the retuned alpha/beta.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cache.cache import Cache
from ..errors import BadInput
from ..jobs.classify import ClassifyOptions, classify_store, read_output
from ..jobs.evaluate import EvalReport, evaluate
from ..jobs.report import ReportOptions, build_report
from ..util.atomic import write_json
from .synthetic import SplitSizes, SyntheticDataset, make_dataset, write_store

log = logging.getLogger(__name__)

RESULTS = "results.json"
MARK = ".tipretrieval-demo"  # only directories holding it are ever removed


@dataclass(frozen=True)
class DemoConfig:
    """Size of the synthetic dataset and which shot counts to run."""

    num_classes: int = 100
    dim: int = 512
    sizes: SplitSizes = field(default_factory=SplitSizes)
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    epochs: int = 20


QUICK = DemoConfig(num_classes=40, sizes=SplitSizes(train=8, val=5, test=10, query=2, views=4),
                   shots=(1, 2, 8), epochs=4)


@dataclass
class ShotResult:
    """Test accuracies (top-1 %) of one cache size, with the alpha/beta searched on val."""

    shots: int
    cache: str
    alpha: float
    beta: float
    val_acc: float
    cache_only: float
    tip: float
    gda: float
    gda_alpha: float
    tip_f: float | None = None       # Tip-Adapter-F, run for the largest cache only
    tip_f_alpha: float | None = None
    tip_f_beta: float | None = None
    best_epoch: int | None = None


@dataclass
class UnbalancedRow:
    """Test top-1 of the cache grown by add-shots, under one weighting and alpha/beta."""

    step: str
    weighting: str
    spread: str  # shots per class: min / median / max
    alpha: float
    beta: float
    cache_only: float
    tip: float
    gda: float


@dataclass
class DemoResult:
    """Everything the demo measured and where it wrote it."""

    out_dir: str
    seed: int
    num_classes: int
    test_rows: int
    zero_shot: float
    shots: list[ShotResult]
    predictions: str
    query_rows: int
    query_acc: float  # agreement of the classified queries with their hidden true labels
    report: str  # index.html of the HTML report of the query predictions
    test_report: str  # index.html of the report of the (labelled) test rows
    unbalanced: list[UnbalancedRow] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A Markdown table of test top-1 accuracy against shots."""
        lines = ["| shots | zero-shot | cache-only | Tip-Adapter | alpha | beta "
                 "| Tip-Adapter-F | alpha | beta | GDA | alpha |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in self.shots:
            fine = ("- | - | -" if s.tip_f is None else
                    f"{s.tip_f:.2f} | {s.tip_f_alpha:.4g} | {s.tip_f_beta:.4g}")
            lines.append(f"| {s.shots} | {self.zero_shot:.2f} | {s.cache_only:.2f} | "
                         f"{s.tip:.2f} | {s.alpha:.4g} | {s.beta:.4g} | {fine} | "
                         f"{s.gda:.2f} | {s.gda_alpha:.4g} |")
        return "\n".join(lines)

    def unbalanced_table(self) -> str:
        """A Markdown table of the add-shots cache: before/after, both weightings."""
        lines = ["| step | weighting | shots min / median / max | alpha | beta | cache-only "
                 "| Tip-Adapter | GDA |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in self.unbalanced:
            lines.append(f"| {r.step} | {r.weighting} | {r.spread} | {r.alpha:.4g} | "
                         f"{r.beta:.4g} | {r.cache_only:.2f} | {r.tip:.2f} | {r.gda:.2f} |")
        return "\n".join(lines)


def _fresh_dir(out: Path) -> None:
    """Empty `out` for a new run; refuse a non-empty directory that no demo marked as its own."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARK).is_file():
            raise BadInput(f"{out} is not empty and holds no previous demo",
                           "choose another `out=`")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).touch()


def _accuracy(report: EvalReport, method: str) -> float:
    return next(s.top1 for s in report.scores if s.method == method)


def _run_shots(store, text: np.ndarray, shots: int, out: Path, config: DemoConfig, seed: int,
               fine_tune: bool) -> tuple[ShotResult, EvalReport]:
    """build -> tune -> eval, then (when `fine_tune`) finetune -> eval tip-f, for one K."""
    path = out / f"cache-{shots}shot"
    cache = Cache.build(store, shots, seed=seed, text=text)
    cache.save(path)
    val = cache.rows_of(store, "val")
    tuned = cache.tune(val, source=(str(store.path), "val"))
    cache.save()
    tuned.save_json(path / "tune-grid.json")
    tuned.save_heatmap(path / "tune-heatmap.png")
    report = evaluate(cache, store, split="test", methods=["zero-shot", "cache", "tip", "gda"])
    result = ShotResult(shots=shots, cache=str(path), alpha=tuned.alpha, beta=tuned.beta,
                        val_acc=tuned.val_acc, cache_only=_accuracy(report, "cache"),
                        tip=_accuracy(report, "tip"), gda=_accuracy(report, "gda"),
                        gda_alpha=cache.info.gda_alpha)
    if fine_tune:
        fine = cache.finetune(store, val, epochs=config.epochs, seed=seed)
        cache.save()
        result.tip_f = _accuracy(evaluate(cache, store, split="test", methods=["tip-f"]), "tip-f")
        result.tip_f_alpha, result.tip_f_beta = cache.alpha, cache.beta
        result.best_epoch = fine.best_epoch + 1
    return result, report


def _unbalanced_row(step: str, cache, store) -> UnbalancedRow:
    report = evaluate(cache, store, split="test", methods=["cache", "tip", "gda"])
    return UnbalancedRow(step, cache.info.weighting, cache.shots_spread(), cache.alpha,
                         cache.beta, _accuracy(report, "cache"), _accuracy(report, "tip"),
                         _accuracy(report, "gda"))


def _run_unbalanced(store, text: np.ndarray, out: Path, seed: int) -> list[UnbalancedRow]:
    """A tuned 2-shot cache, then add-shots gives the odd classes every training image: test
    accuracy before, after with the stale alpha/beta, and after retuning, both weightings."""
    cache = Cache.build(store, 2, seed=seed, text=text)
    cache.tune(cache.rows_of(store, "val"), source=(str(store.path), "val"))
    cache.save(out / "cache-unbalanced")
    rows = [_unbalanced_row("before add-shots (2 shots)", cache, store)]
    train = store.labelled(split="train", with_views=True)
    cache.add_shots(train.take((train.labels % 2 == 1) & ~np.isin(train.row_ids,
                                                                  cache.row_ids)), store=store)
    cache.save()
    for weighting in ("balanced", "sum"):
        cache.set_weighting(weighting)
        rows.append(_unbalanced_row("after add-shots, alpha/beta of before", cache, store))
    for weighting in ("balanced", "sum"):
        cache.set_weighting(weighting)
        cache.retune()
        rows.append(_unbalanced_row("after add-shots, retuned", cache, store))
    cache.set_weighting("balanced")
    cache.retune()
    cache.save()
    return rows


def _classify_queries(cache_dir: str, store_path: Path, out: Path,
                      dataset: SyntheticDataset, per_class: int) -> tuple[Path, int, float]:
    """Classify the query split into CSV parts; score top-1 against the hidden labels."""
    pred_dir = out / "predictions"
    classify_store(cache_dir, store_path, pred_dir,
                   ClassifyOptions(top_k=5, fmt="csv", split="query", evidence=3),
                   show_progress=False)
    results = read_output(pred_dir)
    truth = dataset.labels_for("query", per_class)
    index = np.array([int(i.split("/")[1]) for i in results.ids])
    return pred_dir, len(results), 100.0 * float(np.mean(results.classes[:, 0] == truth[index]))


def _reports(cache_dir: str, store_path: Path, out: Path, pred_dir: Path) -> tuple[Path, Path]:
    """HTML reports of the query predictions and of the classified (labelled) test split."""
    test_dir = out / "test-predictions"
    classify_store(cache_dir, store_path, test_dir,
                   ClassifyOptions(top_k=5, split="test", evidence=3), show_progress=False)
    query = build_report(pred_dir, out / "report", store=store_path, options=ReportOptions(
        title="Demo: query rows (synthetic)",
        links=(("test rows (labelled)", "../report-test/index.html"),)))
    test = build_report(test_dir, out / "report-test", store=store_path, options=ReportOptions(
        title="Demo: test rows (synthetic, labelled)",
        links=(("query rows", "../report/index.html"),)))
    return query.index, test.index


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """The demo's tensors are small: one intra-op thread avoids OpenMP spin-waits, which make
    the grid search 5-10x slower on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_demo(out_dir: str | Path, seed: int = 0, config: DemoConfig | None = None) -> DemoResult:
    """Run the whole pipeline on a seeded synthetic dataset under `out_dir`; results.json too."""
    config = config or DemoConfig()
    if not config.shots or min(config.shots) < 1 or max(config.shots) > config.sizes.train:
        raise BadInput(f"demo shots {config.shots} must lie in 1..{config.sizes.train} "
                       "(the training images per class)")
    out = Path(out_dir)
    _fresh_dir(out)
    dataset = make_dataset(config.num_classes, config.dim, seed=seed)
    log.info("demo: writing a synthetic store of %d classes to %s", config.num_classes, out)
    store = write_store(out / "store", dataset, config.sizes)
    rows, report = [], None
    with _one_torch_thread():
        for k in sorted(config.shots):
            log.info("demo: %d-shot cache: build, tune, evaluate", k)
            result, report = _run_shots(store, dataset.text, k, out, config, seed,
                                        fine_tune=k == max(config.shots))
            rows.append(result)
        pred_dir, n_query, query_acc = _classify_queries(rows[-1].cache, out / "store", out,
                                                         dataset, config.sizes.query)
        log.info("demo: add-shots makes a 2-shot cache unbalanced: both weightings")
        unbalanced = _run_unbalanced(store, dataset.text, out, seed)
        html_index, test_index = _reports(rows[-1].cache, out / "store", out, pred_dir)
    result = DemoResult(
        out_dir=str(out), seed=seed, num_classes=config.num_classes, test_rows=report.rows,
        zero_shot=_accuracy(report, "zero-shot"), shots=rows, predictions=str(pred_dir),
        query_rows=n_query, query_acc=query_acc, report=str(html_index),
        test_report=str(test_index), unbalanced=unbalanced,
    )
    write_json(out / RESULTS, result.to_json())
    return result


def summary(result: DemoResult) -> str:
    """What the demo did, its table, where the outputs are, and how to run on real images."""
    out = result.out_dir
    best = result.shots[-1]
    return f"""\
Tip-Adapter demo on SYNTHETIC data: {result.num_classes} made-up classes of CLIP-like 512-d
features (seed {result.seed}), not real images. The numbers show the pipeline working, not the
accuracy of CLIP on any real dataset.

Test top-1 accuracy (%) on {result.test_rows} synthetic test images; alpha and beta searched on
the validation split with Tip-Adapter's grid; Tip-Adapter-F ({best.shots} shots) fine-tuned
on the stored augmented views and its epoch chosen on validation:

{result.table()}

GDA (Wang et al., ICLR 2024): text + alpha x Gaussian discriminant fitted on the shots' views.

add-shots on a 2-shot cache (odd classes get every training image), test top-1 (%): the
official "sum" cache term lets the classes with more shots win; "balanced" (the default)
weighs each class by mean shots per class / its shots:

{result.unbalanced_table()}

Classified {result.query_rows} unlabelled query rows with the {best.shots}-shot Tip-Adapter-F
cache: {result.query_acc:.2f}% of the top-1 predictions match their hidden true labels.

Outputs under {out}/:
  store/                     feature store (train with augmented views, val, test, query)
  cache-<K>shot/             one cache per shot count (tune-grid.json, tune-heatmap.png)
  cache-unbalanced/          the 2-shot cache grown by add-shots (balanced, retuned)
  predictions/               top-5 predictions of the query split (CSV parts + journal.json)
  report/, report-test/      HTML reports of the query and (labelled) test predictions
  {RESULTS}               every number above
Rerun a step by hand, e.g.:
  tipretrieval eval {best.cache} --store {out}/store --split test

On real images (folders of class sub-folders; an open_clip model in the local cache):
  tipretrieval extract photos/train --store feats --split train --views 10 \\
      --model ViT-B-32 --pretrained openai
  tipretrieval extract photos/val --store feats --split val --views 0
  tipretrieval extract photos/test --store feats --split test --views 0
  tipretrieval text --store feats --templates clip_imagenet --out text.npz
  tipretrieval build --store feats --shots 16 --text text.npz --out cache
  tipretrieval tune cache --store feats
  tipretrieval finetune cache --store feats
  tipretrieval eval cache --store feats --split test
  tipretrieval extract new_photos --store feats --split query --views 0 --unlabelled
  tipretrieval classify cache --store feats --split query --out predictions
or all of it in one command: tipretrieval fit-predict photos/labelled new_photos --out run \\
      --model ViT-B-32 --pretrained openai

Report (synthetic rows have no images, so it shows ids instead of thumbnails); open in a browser:
  {result.report}
  (labelled test rows: {result.test_report})"""
