"""`tipretrieval import` and `tipretrieval info`: fill a feature store and describe it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import BadInput
from ..store.dump_read import Columns, is_dump
from ..store.dumps import SHARD_ROWS, DumpOptions, import_dump
from ..store.ingest import FIELDS, ImportOptions, import_features
from ..store.manifest import DTYPES
from ..store.store import Store

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _lines(path: Path | None, option: str) -> list[str] | None:
    """The non-blank lines of a UTF-8 text file, stripped; BadInput when it cannot be read."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{option} file {path} is not UTF-8 text ({exc.reason} at byte "
                       f"{exc.start}): convert it, e.g. iconv -f latin1 -t utf-8") from exc
    except OSError as exc:
        raise BadInput(f"cannot read {option} file {path} ({exc.strerror}): check the file "
                       "and its permissions") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _keys(pairs: tuple[str, ...]) -> dict[str, str]:
    keys = {}
    for pair in pairs:
        field, sep, name = pair.partition("=")
        if not sep or field not in FIELDS or not name:
            raise BadInput(f"--key {pair!r} is not FIELD=NAME with FIELD one of "
                           f"{', '.join(FIELDS)}: e.g. --key features=embeddings")
        keys[field] = name
    return keys


@click.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--store", "store_path", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Store directory; created when it does not exist.")
@click.option("--split", help="Split tag for every row [default: the source's 'split', else "
                              "train].")
@click.option("--classes", "classes_file", type=_FILE,
              help="Class names in label order, one per line (must extend the store's).")
@click.option("--ids", "ids_file", type=_FILE,
              help="Row ids, one per line [default: the source's 'ids', else SOURCE:ROW].")
@click.option("--labels", "labels_file", type=_FILE,
              help="Labels (class indices or names), one per line [default: the source's].")
@click.option("--key", "keys", multiple=True, metavar="FIELD=NAME",
              help=f"Read FIELD from array NAME of the source; fields: {', '.join(FIELDS)}.")
@click.option("--encoder", help="Model that produced the features [new store: external].")
@click.option("--weights", help="Its pretrained tag or sha256:<hex> of its checkpoint.")
@click.option("--dtype", type=click.Choice(DTYPES),
              help="On-disk dtype of a new store [default: float16].")
@click.option("--require-normalized", is_flag=True,
              help="Refuse unnormalised features instead of L2-normalising them.")
@click.option("--embedding-column", default="embedding", show_default=True,
              help="Dumps: parquet column (or .npz array) of the embeddings.")
@click.option("--id-column", help="Dumps: column of row ids [default: FILE:ROW].")
@click.option("--label-column", help="Dumps: column of labels (class names or indices).")
@click.option("--path-column", help="Dumps: column of source paths (e.g. image_path).")
@click.option("--shard-rows", default=SHARD_ROWS, show_default=True,
              help="Dumps: rows per shard (bounds memory).")
@click.option("--quiet", is_flag=True, help="Dumps: no progress bar.")
def import_cmd(source: Path, store_path: Path, split: str | None, classes_file: Path | None,
               ids_file: Path | None, labels_file: Path | None, keys: tuple[str, ...],
               encoder: str | None, weights: str | None, dtype: str | None,
               require_normalized: bool, embedding_column: str, id_column: str | None,
               label_column: str | None, path_column: str | None, shard_rows: int,
               quiet: bool) -> None:
    """Import precomputed features from SOURCE (.npy, .npz, .pt or .h5) into a store.

    .npz/.pt/.h5 sources hold arrays named features, labels (indices or class names), ids,
    split, sources, views (N, V, D) and classes; a .npy holds features only. A folder, a glob
    or a .parquet file is a dump (e.g. clip-retrieval's img_emb/ + metadata/): streamed in
    shards of --shard-rows rows; rerun to resume after an interruption.
    """
    if split is not None and not split.strip():
        raise BadInput("--split is empty: give a split name such as train, val or query")
    if is_dump(source):
        if ids_file or labels_file or keys:
            raise BadInput("a dump names its fields by column: use --id-column, "
                           "--label-column and --embedding-column, not --ids/--labels/--key")
        columns = Columns(embedding_column, id_column, label_column, path_column)
        done = import_dump(source, store_path, DumpOptions(
            columns=columns, shard_rows=shard_rows, split=split or "train",
            classes=_lines(classes_file, "--classes"), encoder=encoder, weights=weights,
            dtype=dtype, normalize=not require_normalized, progress=not quiet))
        click.echo(f"imported {done.rows} rows from {done.parts} files ({done.skipped} already "
                   f"imported) into {done.store.path}; it now holds {len(done.store)} rows")
        return
    opts = ImportOptions(
        keys=_keys(keys), split=split, ids=_lines(ids_file, "--ids"),
        labels=_lines(labels_file, "--labels"), classes=_lines(classes_file, "--classes"),
        encoder=encoder, weights=weights, dtype=dtype, normalize=not require_normalized,
    )
    result = import_features(source, store_path, opts)
    store, ids = result.store, result.row_ids
    span = f" (row ids {ids[0]}..{ids[-1]})" if len(ids) else ""
    click.echo(f"imported {len(ids)} rows into {'new ' if result.created else ''}store "
               f"{store.path}{span}; it now holds {len(store)} rows, "
               f"generation {store.generation}")


def describe(store: Store) -> dict[str, Any]:
    """Everything `info` reports, as JSON-ready data."""
    m = store.manifest
    counts = store.class_counts()
    return {
        "path": str(store.path), "store_id": m.store_id, "format_version": m.format_version,
        "generation": m.generation, "rows": len(store), "dim": m.dim, "dtype": m.dtype,
        "nbytes": store.nbytes, "provenance": m.provenance.to_json(),
        "classes": [{"label": i, "name": c, "rows": counts[c]} for i, c in enumerate(m.classes)],
        "unlabelled": len(store) - sum(counts.values()),
        "splits": store.split_counts(),
        "shards": [{"name": s.name, "rows": s.rows, "first_row_id": s.first_row_id,
                    "nbytes": s.nbytes, "views": s.views, "digest": s.digest} for s in m.shards],
        "orphans": [{"path": str(p), "nbytes": p.stat().st_size} for p in store.orphans()
                    if p.exists()],
    }


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def _text(d: dict[str, Any]) -> str:
    p = d["provenance"]
    norm = "L2-normalised" if p["normalized"] else "not normalised"
    lines = [
        f"store       {d['path']}",
        f"id          {d['store_id']} (format {d['format_version']}, generation "
        f"{d['generation']})",
        f"rows        {d['rows']:,} ({d['unlabelled']:,} unlabelled)",
        f"features    dim {d['dim']}, {d['dtype']} on disk, {_mb(d['nbytes'])}",
        f"encoder     {p['encoder']} ({p['weights']}), {norm}",
    ]
    if p["preprocess"]:
        lines.append(f"preprocess  {json.dumps(p['preprocess'], sort_keys=True)}")
    splits = ", ".join(f"{s} {n:,}" for s, n in d["splits"].items()) or "-"
    lines.append(f"splits      {splits}")
    lines.append(f"classes     {len(d['classes'])}")
    width = max((len(c["name"]) for c in d["classes"]), default=0)
    lines += [f"  {c['label']:>5}  {c['name']:<{width}}  {c['rows']:>10,}" for c in d["classes"]]
    lines.append(f"shards      {len(d['shards'])}")
    lines += [f"  {s['name']}  {s['rows']:>10,} rows  from row {s['first_row_id']:<10}  "
              f"{_mb(s['nbytes']):>10}  views {s['views']}  {s['digest'][:21]}"
              for s in d["shards"]]
    if d["orphans"]:
        size = _mb(sum(o["nbytes"] for o in d["orphans"]))
        lines.append(f"orphans     {len(d['orphans'])} files ({size}) not in the manifest, left "
                     "by an interrupted (or running) write; the next append removes them")
        lines += [f"  {o['path']}" for o in d["orphans"]]
    return "\n".join(lines)


@click.command("info")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--verify", is_flag=True, help="Check every shard's checksum first (reads all data).")
def info_cmd(store_path: Path, as_json: bool, verify: bool) -> None:
    """Describe a store: rows, dim, classes with counts, splits, provenance, shards, bytes.

    Every shard is checked to exist with its recorded size (--verify also reads it all).
    """
    store = Store.open(store_path)
    store.check_files()
    if verify:
        store.verify()
    d = describe(store)
    if verify:
        d["verified"] = True
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(_text(d))
    if verify:
        click.echo(f"verified    all {len(d['shards'])} shard checksums match")


@click.command("compact")
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--target-mb", type=click.FloatRange(min=0, min_open=True), default=64.0,
              show_default=True, help="Largest merged shard, in MB.")
def compact_cmd(store_path: Path, target_mb: float) -> None:
    """Merge runs of small shards of STORE into fewer, larger ones (atomic; rows unchanged).

    Many small appends make many small shards; merging them makes reads and `info` faster.
    A kill at any point leaves the old or the new state.
    """
    store = Store.open(store_path)
    result = store.compact(int(target_mb * 1e6))
    if not result.merged:
        click.echo(f"nothing to merge in store {store.path} ({result.shards_before} shards)")
        return
    click.echo(f"compacted store {store.path}: {result.shards_before} shards -> "
               f"{result.shards_after} ({result.merged} merged), generation {result.generation}")
