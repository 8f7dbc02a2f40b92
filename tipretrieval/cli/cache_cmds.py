"""Cache commands: build, tune, finetune, eval, add-shots, remove-shots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from ..cache.cache import META, Cache
from ..encode.resolve import encode_into_store, encoder_for, labelled_source
from ..errors import BadInput
from ..jobs.evaluate import EVAL_METHODS, evaluate
from ..method.affinity import WEIGHTINGS
from ..provenance import Provenance
from ..store.store import Store
from .options import cli_text, id_list, model_options, overwrite_option, wants_encoder

if TYPE_CHECKING:
    from ..encode.model import Encoder

METHODS = ",".join(EVAL_METHODS)


def _store(path: str) -> Store:
    return Store.open(path)


def _cache(path: str) -> Cache:
    return Cache.load(path)


def _shots(value: str) -> int | None:
    if value.lower() == "all":
        return None
    try:
        shots = int(value)
    except ValueError:
        shots = 0
    if shots <= 0:
        raise BadInput(f"--shots {value!r} is not a positive number", "give K >= 1 or 'all'")
    return shots


def _encoder(provenance: Provenance, model: str | None, pretrained: str | None,
             checkpoint: str | None, device: str, *, needed: bool = True) -> Encoder | None:
    """The encoder the options name for these features; None when not needed and not named."""
    if not (needed or wants_encoder(model, pretrained, checkpoint)):
        return None
    return encoder_for(provenance, model=model, pretrained=pretrained, checkpoint=checkpoint,
                       device=device)


def _warn(message: str | None) -> None:
    """One line on stderr, when there is something to say (API names shown as options)."""
    if message:
        click.echo(f"warning: {cli_text(message)}", err=True)


def _report_tune(cache, result) -> None:
    """The chosen alpha/beta (and GDA alpha) and one warning per choice on a grid edge."""
    if cache.text is None:
        click.echo(f"cache: beta {result.beta:.4g}  val top-1 {result.val_acc:.2f}% "
                   f"({result.n_val} rows; no text classifier: alpha does not change the "
                   f"cache's predictions)")
    else:
        click.echo(f"alpha {result.alpha:.4g}  beta {result.beta:.4g}  val top-1 "
                   f"{result.val_acc:.2f}% ({result.n_val} rows)")
    record = cache.info.history[-1]
    click.echo(f"gda: alpha {cache.info.gda_alpha:.4g}  val top-1 {record['gda_val_acc']:.2f}%"
               f" (fitted on {cache.info.gda_fit or 'keys'})")
    for line in result.edge_warnings():
        _warn(line)


def _retune_options(command):
    """--retune, --val, --val-split of add-shots and remove-shots."""
    command = click.option("--val-split", default=None,
                           help="Validation split for --retune [default: the last tune's].")(
        command)
    command = click.option("--val", "val_dir", default=None,
                           help="Store of the validation rows for --retune [default: the last "
                                "tune's].")(command)
    return click.option("--retune", is_flag=True,
                        help="Search alpha/beta again on the validation rows, in the same "
                             "commit.")(command)


@click.command("build")
@click.argument("store_arg", metavar="[STORE]", required=False)
@click.option("--store", "store_dir", help="Store the shots come from (or give it as STORE).")
@click.option("--shots", required=True, help="Shots per class (K), or 'all'.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Cache directory.")
@click.option("--text", "text_file", type=click.Path(dir_okay=False),
              help="Text-classifier file from `tipretrieval text`.")
@click.option("--templates", help="Encode the class prompts with these templates instead.")
@click.option("--index", "index_spec", default="Flat", show_default=True,
              help="FAISS factory string, e.g. Flat, IVF1024,Flat, HNSW32.")
@click.option("--index-params", default="",
              help="FAISS search parameters kept with the cache, e.g. nprobe=16 (IVF) or "
                   "efSearch=128 (HNSW).")
@click.option("--seed", default=0, show_default=True, help="Seed of the shot sampling.")
@click.option("--split", default="train", show_default=True, help="Split the shots come from.")
@click.option("--weighting", type=click.Choice(WEIGHTINGS), default="balanced",
              show_default=True,
              help="Cache term per class: balanced (x mean keys per class / its keys) or sum "
                   "(the literal official formula); equal when classes have equal shots.")
@overwrite_option("cache")
@model_options
def build_cmd(store_arg, store_dir, shots, out, text_file, templates, index_spec, index_params,
              seed, split, weighting, overwrite, model, pretrained, checkpoint, device):
    """Build a Tip-Adapter cache from K labelled shots per class of --store.

    Without --text and --templates the cache has no text classifier: its methods are cache
    and gda.
    """
    if store_arg and store_dir and Path(store_arg) != Path(store_dir):
        raise BadInput(f"two stores given ({store_arg}, --store {store_dir})", "give one")
    if not (store_arg or store_dir):
        raise BadInput("no store given", "pass --store STORE")
    k = _shots(shots)
    if (Path(out) / META).exists() and not overwrite:
        raise BadInput(f"{out} already holds a cache", "choose another --out or pass --overwrite")
    store = _store(store_dir or store_arg)
    encoder = _encoder(store.provenance, model, pretrained, checkpoint, device,
                       needed=False) if templates else None
    cache = Cache.build(store, k, seed=seed, text=text_file, templates=templates,
                        index_spec=index_spec, index_params=index_params, split=split,
                        encoder=encoder, weighting=weighting)
    path = cache.save(out)
    methods = "zero-shot, cache, tip, gda" if cache.text is not None else \
        "cache, gda (no text classifier)"
    click.echo(f"cache {path}: {len(cache)} keys, {cache.num_classes} classes (shots per "
               f"class min / median / max: {cache.shots_spread()}), {weighting} weighting, "
               f"index {index_spec}; GDA fitted on {cache.info.gda_fit}; methods: {methods}")


@click.command("tune")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--store", "--val", "val_dir", required=True,
              help="Store with the validation rows (--val: old name).")
@click.option("--split", default="val", show_default=True, help="Validation split.")
@click.option("--scale", nargs=2, type=float, default=(7.0, 3.0), show_default=True,
              help="S_BETA S_ALPHA: grid upper ends.")
@click.option("--steps", nargs=2, type=int, default=(200, 20), show_default=True,
              help="Grid sizes of beta and alpha.")
def tune_cmd(cache_dir, val_dir, split, scale, steps):
    """Search alpha and beta on the official grid (and GDA's alpha) and write them into the
    cache; without a text classifier only beta is searched."""
    cache = _cache(cache_dir)
    result = cache.tune(cache.rows_of(_store(val_dir), split), scale=scale, steps=steps,
                        source=(val_dir, split))
    grid_json, heatmap = cache.path / "tune-grid.json", cache.path / "tune-heatmap.png"
    cache.save()  # first: the grid files describe the alpha and beta the cache adopted
    result.save_json(grid_json)
    result.save_heatmap(heatmap)
    _report_tune(cache, result)
    click.echo(f"grid: {grid_json}\nheat map: {heatmap}")


@click.command("finetune")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--store", "--train", "train_dir", required=True,
              help="Store with the shots' augmented views (--train: old name).")
@click.option("--val-store", "--val", "val_dir",
              help="Store with the validation rows [default: --store] (--val: old name).")
@click.option("--split", default="val", show_default=True, help="Validation split.")
@click.option("--epochs", default=20, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:N, or auto (CUDA when available).")
def finetune_cmd(cache_dir, train_dir, val_dir, split, epochs, seed, device):
    """Tip-Adapter-F: fine-tune the keys on stored views, pick the epoch on val, re-search."""
    cache = _cache(cache_dir)
    store = _store(train_dir)
    val_store = _store(val_dir) if val_dir else store
    result = cache.finetune(store, cache.rows_of(val_store, split), epochs=epochs, seed=seed,
                            device=device)
    cache.save()
    click.echo(f"tip-f: best epoch {result.best_epoch + 1} of {epochs} (val top-1 "
               f"{result.val_acc[result.best_epoch]:.2f}%); searched alpha {cache.alpha:.4g}  "
               f"beta {cache.beta:.4g}  val top-1 {result.tuned.val_acc:.2f}%")


@click.command("eval")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--store", "store_dir", required=True, help="Store with labelled rows.")
@click.option("--split", default="test", show_default=True)
@click.option("--methods", default=METHODS, show_default=True,
              help="Comma-separated: zero-shot, cache, tip, gda, tip-f.")
@click.option("--mode", type=click.Choice(["exact", "retrieval"]), default="exact",
              show_default=True)
@click.option("--k", default=64, show_default=True, help="Keys per query in retrieval mode.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_cmd(cache_dir, store_dir, split, methods, mode, k, as_json):
    """Top-1/top-5 accuracy of each method on the labelled rows of a store."""
    if k < 1:
        raise BadInput(f"--k {k} is not positive: retrieve at least one key per query")
    cache = _cache(cache_dir)
    _warn(cache.stale_tuning())
    report = evaluate(cache, _store(store_dir), split=split, mode=mode, k=k,
                      methods=[m.strip() for m in methods.split(",") if m.strip()])
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.to_text())


@click.command("add-shots")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--store", "store_dir", help="Store of the shots [default: the cache's store].")
@click.option("--ids", multiple=True, help="Row ids (repeat or comma-separate).")
@click.option("--ids-file", type=click.Path(exists=True, dir_okay=False),
              help="File of ids, one per line.")
@click.option("--split", default="train", show_default=True)
@click.option("--images", multiple=True, help="Image source to encode and add (repeatable).")
@click.option("--label", multiple=True, help="Class name of each --images source.")
@click.option("--views", default=10, show_default=True, help="Augmented views per new image.")
@click.option("--text", "text_file", type=click.Path(dir_okay=False),
              help="Text-classifier file holding the new classes.")
@_retune_options
@model_options
def add_shots_cmd(cache_dir, store_dir, ids, ids_file, split, images, label, views, text_file,
                  retune, val_dir, val_split, model, pretrained, checkpoint, device):
    """Add labelled shots (and new classes) to a cache without rebuilding it.

    Either ids of rows already in the store (--ids; none: every labelled SPLIT row that is
    not a key yet), or images (--images SOURCE --label NAME) encoded into the store first.
    """
    cache = _cache(cache_dir)
    store = cache.open_store(store_dir)
    wanted = id_list(ids, ids_file)
    encoder = _encoder(cache.provenance, model, pretrained, checkpoint, device,
                       needed=bool(images))
    if images:
        if wanted:
            raise BadInput("both --images and --ids given", "give one of them")
        if label and len(label) != len(images):
            raise BadInput(f"{len(images)} --images for {len(label)} --label",
                           "give one --label per source, or none for class-folder sources")
        sources = [labelled_source(spec, label[i] if label else None)
                   for i, spec in enumerate(images)]
        wanted = encode_into_store(sources, store.path, encoder, split=split, views=views,
                                   strict=True)
        store = store.refresh()
    rows = cache.new_shots(store, split=split, ids=wanted or None)
    before = cache.num_classes
    cache.add_shots(rows, classes=store.classes, text=text_file, encoder=encoder,
                    store_generation=store.generation, store=store)
    result = _maybe_retune(cache, retune, val_dir, val_split)
    cache.save()
    click.echo(f"added {len(rows)} shots ({cache.num_classes - before} new classes): "
               f"{len(cache)} keys, generation {cache.generation}")
    _after_shots(cache, result)


def _maybe_retune(cache, retune: bool, val_dir: str | None, val_split: str | None):
    """`Cache.retune` when asked (before the save, so one generation holds both)."""
    if not retune:
        if val_dir or val_split:
            raise BadInput("--val/--val-split only apply with --retune", "add --retune")
        return None
    return cache.retune(_store(val_dir) if val_dir else None, val_split)


def _after_shots(cache, result) -> None:
    """The shots-per-class spread, then the retune result or the stale-tuning warning."""
    click.echo(f"shots per class min / median / max: {cache.shots_spread()} "
               f"({cache.info.weighting} weighting)")
    if result is not None:
        _report_tune(cache, result)
    _warn(cache.stale_tuning())


@click.command("remove-shots")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--ids", multiple=True, help="Store ids of the shots (repeat or comma-separate).")
@click.option("--ids-file", type=click.Path(exists=True, dir_okay=False),
              help="File of ids, one per line.")
@click.option("--row-ids", multiple=True, type=int, help="Store row ids (integers) instead.")
@click.option("--store", "store_dir", help="Store to resolve --ids [default: the cache's store].")
@_retune_options
def remove_shots_cmd(cache_dir, ids, ids_file, row_ids, store_dir, retune, val_dir, val_split):
    """Remove keys from a cache, e.g. mislabelled shots."""
    cache = _cache(cache_dir)
    wanted = id_list(ids, ids_file)
    targets = list(row_ids)
    if wanted:
        targets += cache.key_row_ids(cache.open_store(store_dir), wanted).tolist()
    if not targets:
        raise BadInput("nothing to remove", "give --ids, --ids-file or --row-ids")
    removed = cache.remove_shots(np.unique(targets),
                                 store=cache.open_store(store_dir) if store_dir else None)
    result = _maybe_retune(cache, retune, val_dir, val_split)
    cache.save()
    click.echo(f"removed {removed} shots: {len(cache)} keys, generation {cache.generation}")
    _after_shots(cache, result)
