"""`tipretrieval classify`: resumable batch classification of a query store or image source."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadInput
from ..jobs.classify import ClassifyOptions, classify_store, store_from_images
from ..jobs.classify.output import WRITERS
from ..method.adapter import METHODS, MODES
from ..util.ray_setup import ENGINES
from .options import model_options, overwrite_option


@click.command("classify")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--store", "store_path", type=click.Path(path_type=Path),
              help="Query store to classify.")
@click.option("--split", default=None, help="Classify only this split of the query store.")
@click.option("--images", default=None,
              help="Image folder, CSV or glob: encoded with the cache's encoder, then classified.")
@model_options
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output directory (parts + journal.json); rerun to resume.")
@click.option("--top-k", default=5, show_default=True, help="Classes kept per row.")
@click.option("--mode", type=click.Choice(MODES), default="exact", show_default=True)
@click.option("--k", default=64, show_default=True, help="Neighbours in retrieval mode.")
@click.option("--method", type=click.Choice(METHODS), default="tip", show_default=True)
@click.option("--format", "fmt", type=click.Choice(list(WRITERS)), default="parquet",
              show_default=True)
@click.option("--batch-size", default=8192, show_default=True,
              help="Store rows per part: bounds memory; parts are the resume unit.")
@click.option("--logits", is_flag=True, help="Also write the full logits.")
@click.option("--evidence", default=0, show_default=True,
              help="Also write, per row, the N cache keys that contributed most to its top "
                   "class (ids, labels, similarities).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True)
@click.option("--ray-address", default=None, help="Existing Ray cluster (default: local Ray).")
@overwrite_option("output")
@click.option("--accept-new-generation", is_flag=True,
              help="Resume although the cache or query store changed since the job started.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def classify(cache: Path, store_path: Path | None, split: str | None, images: str | None,
             model: str | None, pretrained: str | None, checkpoint: str | None, device: str,
             out: Path,
             top_k: int, mode: str, k: int, method: str, fmt: str, batch_size: int,
             logits: bool, evidence: int, engine: str, ray_address: str | None, overwrite: bool,
             accept_new_generation: bool, quiet: bool) -> None:
    """Classify every row of a query store (or image source) with CACHE into --out."""
    if (store_path is None) == (images is None):
        raise BadInput("no query store or images, or both", "give one of --store QUERIES or "
                       "--images SOURCE")
    options = ClassifyOptions(top_k=top_k, method=method, mode=mode, k=k, fmt=fmt,
                              batch_size=batch_size, logits=logits, split=split,
                              evidence=evidence)
    if images is not None:
        store_path = store_from_images(cache, images, out, model=model, pretrained=pretrained,
                                       checkpoint=checkpoint, device=device)
    journal = classify_store(cache, store_path, out, options, overwrite=overwrite,
                             accept_new_generation=accept_new_generation, engine=engine,
                             ray_address=ray_address, show_progress=not quiet)
    summary = journal.to_json()
    click.echo(f"{summary['rows']} rows classified into {out} ({len(summary['parts'])} parts)")
