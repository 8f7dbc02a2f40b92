"""`tipretrieval report` (a classify output -> a static HTML site) and `tipretrieval
fit-predict` (two image folders -> cache, predictions and report in one resumable command)."""

from __future__ import annotations

from pathlib import Path

import click

from ..encode.extract import default_workers
from ..encode.resolve import encoder_for
from ..jobs.fit_predict import HOLDOUT_RULE, FitPredictOptions, fit_predict
from ..jobs.report import ReportOptions, ReportResult, build_report
from ..method.adapter import METHODS
from .cache_cmds import _shots
from .encode_cmds import _store_provenance
from .options import model_options


def _report_line(result: ReportResult) -> str:
    return (f"report: {result.rows} rows, {result.pages} pages, {result.thumbnails} thumbnails, "
            f"{result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s -> {result.index}")


@click.command("report")
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--html", "html_dir", required=True, type=click.Path(file_okay=False,
              path_type=Path), help="Directory of the static site (index.html inside).")
@click.option("--store", "store_path", type=click.Path(file_okay=False, path_type=Path),
              help="The classified store: its images give thumbnails, its labels accuracies "
                   "[default: OUTPUT/_query_store of classify --images].")
@click.option("--cache", "cache_path", type=click.Path(file_okay=False, path_type=Path),
              help="The cache [default: the one the output was classified with].")
@click.option("--per-class", default=48, show_default=True, help="Rows shown per class page.")
@click.option("--max-rows", default=20_000, show_default=True,
              help="Rows shown over all class pages (bounds the report's size).")
@click.option("--to-label", default=50, show_default=True,
              help="Least-sure rows to list for labelling.")
@click.option("--thumb-size", default=128, show_default=True, help="Thumbnail size in pixels.")
def report_cmd(output: Path, html_dir: Path, store_path: Path | None, cache_path: Path | None,
               per_class: int, max_rows: int, to_label: int, thumb_size: int) -> None:
    """Write a static HTML report of the classify OUTPUT: rows per class, confidence, pages of
    images with their top classes and evidence, accuracies for labelled rows, and the rows to
    label next (to-label.txt / to-label.csv)."""
    options = ReportOptions(per_class=per_class, max_rows=max_rows, to_label=to_label,
                            thumb_size=thumb_size)
    click.echo(_report_line(build_report(output, html_dir, store=store_path, cache=cache_path,
                                         options=options)))


@click.command("fit-predict")
@click.argument("labelled_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("new_dir")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of everything: store, cache, predictions, report.")
@model_options
@click.option("--shots", default="all", show_default=True,
              help="Shots per class (K), or 'all' labelled training images.")
@click.option("--finetune", is_flag=True, help="Also Tip-Adapter-F (needs validation rows).")
@click.option("--method", type=click.Choice(METHODS), default="tip", show_default=True)
@click.option("--evidence", default=3, show_default=True,
              help="Cache keys shown behind each prediction (ignored by zero-shot).")
@click.option("--templates", default="tip_imagenet", show_default=True,
              help="Prompt templates of the text classifier (class names = folder names).")
@click.option("--views", default=10, show_default=True,
              help="Augmented views per labelled training image.")
@click.option("--epochs", default=20, show_default=True, help="Tip-Adapter-F epochs.")
@click.option("--batch-size", default=256, show_default=True, help="Images per model batch.")
@click.option("--workers", type=int, default=None,
              help="Decoding worker processes [default: CPU cores - 1, at most 16].")
@click.option("--seed", default=0, show_default=True)
def fit_predict_cmd(labelled_dir, new_dir, out: Path, model, pretrained, checkpoint, device,
                    shots, finetune, method, evidence, templates, views, epochs, batch_size,
                    workers, seed) -> None:
    """Fit a cache on LABELLED_DIR (one sub-folder per class), classify NEW_DIR, write the report.

    Labelled images are encoded with --views augmented views; some are held out per class to
    tune alpha/beta. Every stage is resumable: rerun the same command after adding images to
    either folder, and only the new ones are encoded (new labelled images become shots).
    """
    options = FitPredictOptions(
        shots=_shots(shots), finetune=finetune, method=method, evidence=evidence,
        templates=templates, views=views,
        epochs=epochs, seed=seed, batch_size=batch_size,
        workers=default_workers() if workers is None else workers)
    encoder = encoder_for(_store_provenance(out / "store"), model=model, pretrained=pretrained,
                          checkpoint=checkpoint, device=device)
    r = fit_predict(labelled_dir, new_dir, out, encoder, options)
    click.echo(f"labelled: {r.labelled_new} images encoded this run; {r.val_rows} held out for "
               f"validation ({HOLDOUT_RULE})")
    click.echo(f"cache {out / 'cache'}: {r.keys} keys, {r.classes} classes, {r.shots_added} "
               f"shots added; {r.tuned}")
    click.echo(f"new images: {r.new_images} encoded this run; {r.predicted} rows classified "
               f"into {out / 'predictions'}" + (f"; {r.bad_files} unreadable files skipped "
                                               "(see the extract-report files)" if r.bad_files
                                               else ""))
    if r.val_report is not None:
        click.echo("validation " + _report_line(r.val_report))
    click.echo(_report_line(r.report))
    click.echo(f"open {r.report.index}")
