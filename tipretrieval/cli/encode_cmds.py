"""`tipretrieval extract` (images -> store) and `tipretrieval text` (prompts -> classifier)."""

from __future__ import annotations

from pathlib import Path

import click

from ..encode.extract import ExtractOptions, default_workers, extract
from ..encode.ray_extract import extract_ray
from ..encode.resolve import encoder_for, spec_for
from ..encode.sources import scan_source
from ..encode.text import build_text_classifier, read_classnames
from ..errors import BadInput
from ..provenance import Provenance
from ..store.manifest import MANIFEST_NAME
from ..store.store import Store
from ..util.ray_setup import ENGINES
from .options import model_options


def _store_provenance(store_dir: Path) -> Provenance | None:
    """The provenance of the store at `store_dir`, or None when there is none yet."""
    return Store.open(store_dir).provenance if (store_dir / MANIFEST_NAME).exists() else None


@click.command("extract")
@click.argument("source")
@click.option("--store", "store_dir", required=True, type=click.Path(file_okay=False),
              help="Store directory (created when missing).")
@click.option("--split", default="train", show_default=True,
              help="Split name: train, val, test, query or your own.")
@click.option("--views", default=10, show_default=True,
              help="Augmented views per labelled train image (0: eval transform only).")
@model_options
@click.option("--batch-size", default=256, show_default=True, help="Images per model batch.")
@click.option("--workers", type=int, default=None,
              help="Decoding worker processes [default: CPU cores - 1, at most 16].")
@click.option("--seed", default=0, show_default=True, help="Seed of the augmented views.")
@click.option("--chunk", default=4096, show_default=True,
              help="Images per store append (work lost to a kill is at most one chunk).")
@click.option("--unlabelled", is_flag=True, help="Ignore class folders / CSV labels.")
@click.option("--id-prefix", default="", help="Prefix for row ids (default: path in the source).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Bad-file report [default: STORE/extract-report-SPLIT.json].")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="ray: blocks of --chunk images encoded by a Ray actor pool (one per GPU).")
@click.option("--ray-address", default=None, help="Existing Ray cluster (default: local Ray).")
def extract_cmd(source, store_dir, split, views, model, pretrained, checkpoint, device,
                batch_size, workers, seed, chunk, unlabelled, id_prefix, report_path, engine,
                ray_address):
    """Encode the images of SOURCE into the store.

    SOURCE is a folder of class sub-folders, a plain folder, a glob, or a CSV/TSV of
    path[,label]. Row ids are image paths relative to the source root. Rerunning skips ids
    already stored; unreadable files are skipped and listed in the report.
    """
    store_path = Path(store_dir)
    src = scan_source(source, unlabelled=unlabelled)
    store_prov = _store_provenance(store_path)
    options = ExtractOptions(
        split=split, views=views, batch_size=batch_size, seed=seed, chunk=chunk,
        workers=default_workers() if workers is None else workers,
    )
    report_file = Path(report_path) if report_path else store_path / f"extract-report-{split}.json"
    if engine == "ray":
        spec = spec_for(store_prov, model=model, pretrained=pretrained, checkpoint=checkpoint)
        report = extract_ray(src, store_path, spec, options, report_file, id_prefix=id_prefix,
                             address=ray_address)
    else:
        encoder = encoder_for(store_prov, model=model, pretrained=pretrained,
                              checkpoint=checkpoint, device=device)
        report = extract(src, store_path, encoder, options, report_file, id_prefix=id_prefix)
    click.echo(f"encoded {report.encoded}, already stored {report.already_stored}, "
               f"skipped {len(report.bad)} bad files (report: {report_file})")


@click.command("text")
@click.option("--classes", "classes_file", type=click.Path(dir_okay=False),
              help="Class names, one per line ('_' reads as a space).")
@click.option("--store", "store_dir", type=click.Path(file_okay=False),
              help="Take class names (unless --classes) and the encoder from this store.")
@click.option("--templates", required=True,
              help="Template set (clip_imagenet, tip_imagenet, a dataset name) or a file.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output .npz (weights, classes, provenance).")
@model_options
def text_cmd(classes_file, store_dir, templates, out, model, pretrained, checkpoint, device):
    """Build the CLIP text classifier: one prompt-ensembled, L2-normalised row per class."""
    if not (classes_file or store_dir):
        raise BadInput("no class names: pass --classes FILE or --store DIR")
    store = Store.open(Path(store_dir)) if store_dir else None
    names = read_classnames(classes_file) if classes_file else list(store.classes)
    if not names:
        raise BadInput(f"store {store_dir} has no classes yet: pass --classes FILE")
    encoder = encoder_for(store.provenance if store else None, model=model,
                          pretrained=pretrained, checkpoint=checkpoint, device=device)
    build_text_classifier(encoder, names, templates).save(out)
    click.echo(f"text classifier: {len(names)} classes x {templates} -> {out}")
