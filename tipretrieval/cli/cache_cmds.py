"""Cache commands: build, tune, finetune, eval, add-shots, remove-shots."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ..errors import BadInput
from ..jobs.evaluate import EVAL_METHODS
from .encode_cmds import load_cli_encoder, model_options

METHODS = ",".join(EVAL_METHODS)


def _store(path: str):
    from ..store.store import Store

    return Store.open(path)


def _cache(path: str):
    from ..cache.cache import Cache

    return Cache.load(path)


def _shots(value: str) -> int | None:
    if value.lower() == "all":
        return None
    try:
        shots = int(value)
    except ValueError:
        shots = 0
    if shots <= 0:
        raise BadInput(f"--shots {value!r} is not a positive number: give K >= 1 or 'all'")
    return shots


def _id_list(ids: tuple[str, ...], ids_file: str | None) -> list[str]:
    """Ids from repeated/comma-separated --ids and an --ids-file (one per line)."""
    out = [i for value in ids for i in value.split(",") if i]
    if ids_file:
        out += [line.strip() for line in Path(ids_file).read_text().splitlines() if line.strip()]
    return out


def _wants_encoder(model, pretrained, checkpoint) -> bool:
    return any(v is not None for v in (model, pretrained, checkpoint))


@click.command("build")
@click.argument("store_dir", metavar="STORE")
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
@click.option("--force", is_flag=True, help="Replace an existing cache at --out.")
@model_options
def build_cmd(store_dir, shots, out, text_file, templates, index_spec, index_params, seed,
              split, force, model, pretrained, checkpoint, device):
    """Build a Tip-Adapter cache from K labelled shots per class of STORE."""
    from ..cache.cache import META, Cache

    k = _shots(shots)
    if (Path(out) / META).exists() and not force:
        raise BadInput(f"{out} already holds a cache: choose another --out or pass --force")
    store = _store(store_dir)
    encoder = None
    if templates and _wants_encoder(model, pretrained, checkpoint):
        encoder = load_cli_encoder(model, pretrained, checkpoint, device, store.provenance)
    cache = Cache.build(store, k, seed=seed, text=text_file, templates=templates,
                        index_spec=index_spec, index_params=index_params, split=split,
                        encoder=encoder)
    path = cache.save(out)
    counts = cache.class_counts()
    click.echo(f"cache {path}: {len(cache)} keys, {cache.num_classes} classes "
               f"({counts.min()}-{counts.max()} shots per class), index {index_spec}")


@click.command("tune")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--val", "val_dir", required=True, help="Store with the validation rows.")
@click.option("--split", default="val", show_default=True, help="Validation split.")
@click.option("--scale", nargs=2, type=float, default=(7.0, 3.0), show_default=True,
              help="S_BETA S_ALPHA: grid upper ends.")
@click.option("--steps", nargs=2, type=int, default=(200, 20), show_default=True,
              help="Grid sizes of beta and alpha.")
def tune_cmd(cache_dir, val_dir, split, scale, steps):
    """Search alpha and beta on the official grid and write them into the cache."""
    cache = _cache(cache_dir)
    result = cache.tune(cache.rows_of(_store(val_dir), split), scale=scale, steps=steps)
    grid_json, heatmap = cache.path / "tune-grid.json", cache.path / "tune-heatmap.png"
    cache.save()  # first: the grid files describe the alpha and beta the cache adopted
    result.save_json(grid_json)
    result.save_heatmap(heatmap)
    click.echo(f"alpha {result.alpha:.4g}  beta {result.beta:.4g}  val top-1 "
               f"{result.val_acc:.2f}% ({result.n_val} rows)")
    click.echo(f"grid: {grid_json}\nheat map: {heatmap}")


@click.command("finetune")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--train", "train_dir", required=True, help="Store with the shots' augmented views.")
@click.option("--val", "val_dir", required=True, help="Store with the validation rows.")
@click.option("--split", default="val", show_default=True, help="Validation split.")
@click.option("--epochs", default=20, show_default=True)
@click.option("--seed", default=0, show_default=True)
def finetune_cmd(cache_dir, train_dir, val_dir, split, epochs, seed):
    """Tip-Adapter-F: fine-tune the keys on stored views, pick the epoch on val, re-search."""
    cache = _cache(cache_dir)
    result = cache.finetune(_store(train_dir), cache.rows_of(_store(val_dir), split),
                            epochs=epochs, seed=seed)
    cache.save()
    click.echo(f"tip-f: best epoch {result.best_epoch + 1} of {epochs} (val top-1 "
               f"{result.val_acc[result.best_epoch]:.2f}%); searched alpha {cache.alpha:.4g}  "
               f"beta {cache.beta:.4g}  val top-1 {result.tuned.val_acc:.2f}%")


@click.command("eval")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--store", "store_dir", required=True, help="Store with labelled rows.")
@click.option("--split", default="test", show_default=True)
@click.option("--methods", default=METHODS, show_default=True,
              help="Comma-separated: zero-shot, cache, tip, tip-f.")
@click.option("--mode", type=click.Choice(["exact", "retrieval"]), default="exact",
              show_default=True)
@click.option("--k", default=64, show_default=True, help="Keys per query in retrieval mode.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_cmd(cache_dir, store_dir, split, methods, mode, k, as_json):
    """Top-1/top-5 accuracy of each method on the labelled rows of a store."""
    from ..jobs.evaluate import evaluate

    if k < 1:
        raise BadInput(f"--k {k} is not positive: retrieve at least one key per query")
    report = evaluate(_cache(cache_dir), _store(store_dir), split=split, mode=mode, k=k,
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
@model_options
def add_shots_cmd(cache_dir, store_dir, ids, ids_file, split, images, label, views, text_file,
                  model, pretrained, checkpoint, device):
    """Add labelled shots (and new classes) to a cache without rebuilding it.

    Either ids of rows already in the store (--ids; none: every labelled SPLIT row that is
    not a key yet), or images (--images SOURCE --label NAME) encoded into the store first.
    """
    cache = _cache(cache_dir)
    store = _store(store_dir or _cache_store_path(cache))
    if cache.store_id is not None and store.store_id != cache.store_id:
        raise BadInput(f"store {store.path} is not the store cache {cache.path} was built from:"
                       " add shots to that store")
    wanted = _id_list(ids, ids_file)
    if images:
        if wanted:
            raise BadInput("give either --images or --ids, not both")
        encoder = load_cli_encoder(model, pretrained, checkpoint, device, cache.provenance)
        wanted = _encode_images(store, images, label, split, views, encoder)
        store = store.refresh()
    else:
        encoder = (load_cli_encoder(model, pretrained, checkpoint, device, cache.provenance)
                   if _wants_encoder(model, pretrained, checkpoint) else None)
    rows = store.select(split=split, ids=wanted or None)
    rows = rows.take(rows.labels >= 0)
    if wanted:
        missing = sorted(set(wanted) - set(rows.ids.tolist()))
        if missing:
            raise BadInput(f"ids {missing[:5]} are not labelled '{split}' rows of {store.path}: "
                           "check the ids and --split")
    else:
        rows = rows.take(~np.isin(rows.row_ids, cache.row_ids))
        if not len(rows):
            raise BadInput(f"every labelled '{split}' row of {store.path} is already a key: "
                           "add rows to the store first or give --images")
    before = cache.num_classes
    cache.add_shots(rows, classes=store.classes, text=text_file, encoder=encoder,
                    store_generation=store.generation)
    cache.save()
    click.echo(f"added {len(rows)} shots ({cache.num_classes - before} new classes): "
               f"{len(cache)} keys, generation {cache.generation}")


def _cache_store_path(cache) -> str:
    if not cache.info.store_path:
        raise BadInput("the cache does not record its store: pass --store STORE")
    return cache.info.store_path


def _encode_images(store, images, labels, split, views, encoder) -> list[str]:
    """Encode the --images sources into the store; the ids of their rows."""
    from ..encode import ImageItem, Source, scan_source
    from ..encode.extract import ExtractOptions, extract

    if labels and len(labels) != len(images):
        raise BadInput(f"{len(images)} --images for {len(labels)} --label: give one --label per"
                       " source, or none for class-folder sources")
    ids = []
    for i, spec in enumerate(images):
        source = scan_source(spec, unlabelled=bool(labels))
        if labels:
            source = Source(source.root, [ImageItem(it.id, it.path, labels[i])
                                          for it in source.items])
        if not source.labelled:
            raise BadInput(f"images of {spec} have no class: give --label NAME or class folders")
        report = extract(source, store.path, encoder, ExtractOptions(split=split, views=views))
        if report.bad:
            raise BadInput(f"{len(report.bad)} images of {spec} could not be read (first: "
                           f"{report.bad[0].path}): fix or remove them and rerun")
        ids += [it.id for it in source.items]
    return ids


@click.command("remove-shots")
@click.argument("cache_dir", metavar="CACHE")
@click.option("--ids", multiple=True, help="Store ids of the shots (repeat or comma-separate).")
@click.option("--ids-file", type=click.Path(exists=True, dir_okay=False),
              help="File of ids, one per line.")
@click.option("--row-ids", multiple=True, type=int, help="Store row ids (integers) instead.")
@click.option("--store", "store_dir", help="Store to resolve --ids [default: the cache's store].")
def remove_shots_cmd(cache_dir, ids, ids_file, row_ids, store_dir):
    """Remove keys from a cache, e.g. mislabelled shots."""
    cache = _cache(cache_dir)
    wanted = _id_list(ids, ids_file)
    targets = list(row_ids)
    if wanted:
        found = _store(store_dir or _cache_store_path(cache)).select(ids=wanted)
        missing = sorted(set(wanted) - set(found.ids.tolist()))
        if missing:
            raise BadInput(f"ids {missing[:5]} are not in the cache's store: check the ids")
        targets += found.row_ids.tolist()
    if not targets:
        raise BadInput("nothing to remove: give --ids, --ids-file or --row-ids")
    removed = cache.remove_shots(np.unique(targets))
    cache.save()
    click.echo(f"removed {removed} shots: {len(cache)} keys, generation {cache.generation}")


commands = [build_cmd, tune_cmd, finetune_cmd, eval_cmd, add_shots_cmd, remove_shots_cmd]
