"""`tipretrieval index` and `tipretrieval search`: nearest stored rows by text, image or row."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..jobs.search import Query, StoreIndex, search
from ..jobs.search.choose import DEFAULT_BUDGET
from ..store.store import Store
from .options import model_options

_STORE = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("index")
@click.argument("store_path", metavar="STORE", type=_STORE)
@click.option("--split", default=None, help="Index only this split [default: all rows].")
@click.option("--index", "spec", default="auto", show_default=True,
              help="FAISS factory string (e.g. Flat, IVF4096,SQ8, HNSW32) or 'auto' (from "
                   "the row count and --memory, autofaiss's rule).")
@click.option("--memory", default=DEFAULT_BUDGET, show_default=True,
              help="Memory budget of the index for --index auto.")
@click.option("--params", default="", help="Search parameters kept with the index, e.g. "
                                           "nprobe=32 (IVF) or efSearch=128 (HNSW).")
@click.option("--rebuild", is_flag=True, help="Build anew instead of adding the new rows.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def index_cmd(store_path: Path, split: str | None, spec: str, memory: str, params: str,
              rebuild: bool, quiet: bool) -> None:
    """Build or update (new rows only) the search index of STORE, kept beside it."""
    built = StoreIndex.ensure(Store.open(store_path), split=split, spec=spec, memory=memory,
                              params=params, rebuild=rebuild, show_progress=not quiet)
    click.echo(f"{built.info.rows} rows in {built.info.spec} index {built.path} "
               f"(store generation {built.info.store_generation})")


@click.command("search")
@click.argument("store_path", metavar="STORE", type=_STORE)
@click.option("--text", default=None, help="Query text, encoded with the store's encoder.")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="Query image file, encoded with the store's encoder.")
@click.option("--id", "row", default=None, help="Query by a stored row: its row id or id.")
@click.option("-k", "k", default=10, show_default=True, help="Results to return.")
@click.option("--split", default=None, help="Only rows of this split.")
@click.option("--label", default=None, help="Only rows of this class name.")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results to a .parquet or .json file.")
def search_cmd(store_path: Path, text: str | None, image: Path | None, row: str | None, k: int,
               split: str | None, label: str | None, model: str | None,
               pretrained: str | None, checkpoint: str | None, device: str, as_json: bool,
               out: Path | None) -> None:
    """The k rows of STORE nearest to a text, an image or a stored row."""
    hits = search(store_path, Query(text=text, image=image, row=row), k=k, split=split,
                  label=label, model=model, pretrained=pretrained, checkpoint=checkpoint,
                  device=device)
    if out is not None:
        hits.write(out)
    click.echo(json.dumps(hits.records(), indent=1) if as_json else hits.to_text())
