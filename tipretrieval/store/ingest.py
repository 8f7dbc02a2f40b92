"""Import precomputed features (.npy, .npz, .pt, .h5) into a store, validated and normalised."""

from __future__ import annotations

import logging
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, TipError
from ..provenance import Provenance
from ..rows import Rows
from .manifest import MANIFEST_NAME
from .store import Store
from .validate import check_finite

log = logging.getLogger(__name__)

FIELDS = ("features", "labels", "ids", "split", "sources", "views", "classes", "encoder",
          "weights")
SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".h5", ".hdf5")


@dataclass
class ImportOptions:
    """How to read a source file and which store settings to use when creating the store.

    `keys` maps a field (see FIELDS) to its key in the source when it differs from the field
    name. `ids`, `labels` and `classes` given here override the source's. `normalize=False`
    refuses unnormalised features instead of L2-normalising them.
    """

    keys: dict[str, str] = field(default_factory=dict)
    split: str | None = None
    ids: list[str] | None = None
    labels: list[str] | None = None
    classes: list[str] | None = None
    encoder: str | None = None
    weights: str | None = None
    dtype: str | None = None
    normalize: bool = True


@dataclass
class ImportResult:
    """What an import did."""

    store: Store
    row_ids: np.ndarray
    created: bool


def _numpy(value: Any) -> Any:
    """Tensors, lists and bytes as numpy arrays / str; other scalars unchanged."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        return value.float().numpy() if value.is_floating_point() else value.numpy()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind == "S":
            return np.char.decode(arr, "utf-8")
        return arr
    return value


def _read_h5(path: Path, names: set[str]) -> dict[str, Any]:
    import h5py

    with h5py.File(path, "r") as f:
        out = {k: _numpy(v) for k, v in f.attrs.items() if k in names}
        for key in names & set(f.keys()):
            ds = f[key]
            out[key] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
        return out


def _read_pt(path: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable or unsafe files
        raise BadInput(f"cannot load {path} with torch ({exc}): save a dict of tensors, "
                       "lists and strings with torch.save") from exc
    if hasattr(obj, "detach"):
        return {"features": obj}
    if not isinstance(obj, dict):
        raise BadInput(f"{path} holds a {type(obj).__name__}: save a dict such as "
                       "{'features': tensor, 'labels': tensor, 'ids': [...]}")
    return obj


def read_source(path: Path | str, keys: dict[str, str] | None = None) -> dict[str, Any]:
    """The fields found in a source file, by field name (features only for .npy)."""
    path = Path(path)
    keys = {f: (keys or {}).get(f, f) for f in FIELDS}
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BadInput(f"source {path} does not exist: check the path")
    if suffix not in SUFFIXES:
        raise BadInput(f"source {path} has an unsupported type: give one of {SUFFIXES}")
    try:
        if suffix == ".npy":
            raw = {keys["features"]: np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        elif suffix in (".pt", ".pth"):
            raw = _read_pt(path)
        else:
            raw = _read_h5(path, set(keys.values()))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInput(f"cannot read {path} ({exc}): check that it is a valid {suffix} file") \
            from exc
    found = {f: _numpy(raw[k]) for f, k in keys.items() if k in raw}
    if "features" not in found and "views" not in found:
        raise BadInput(f"{path} has no {keys['features']!r} array (it has {sorted(raw)}): "
                       "name the features array with --key features=NAME")
    return found


def _float_array(value: Any, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise BadInput(f"{what} have dtype {arr.dtype}: give floating-point {what}")
    if arr.ndim != ndim:
        raise BadInput(f"{what} have shape {arr.shape}: give a {ndim}-D array")
    return arr.astype(np.float32)


def _normalised(x: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """`x` scaled to unit rows; BadInput for NaN/inf or all-zero rows (they cannot be scaled)."""
    check_finite(x, ids, what)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    zero = (norms == 0).any(axis=tuple(range(1, x.ndim)))
    if zero.any():
        i = int(np.flatnonzero(zero)[0])
        raise BadInput(f"{what} of {int(zero.sum())} rows are all zero (first: id {ids[i]!r}): "
                       "drop those rows, they cannot be normalised")
    return x / norms


def _names(values: Any) -> np.ndarray | None:
    """Label values as class-name strings, or None when they are class indices."""
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind in "iufb":
        return None
    names = arr.astype(str)
    return None if np.char.isdigit(np.char.lstrip(names, "-")).all() else names


def _labels(values: Any, vocabulary: list[str]) -> np.ndarray:
    """Label indices from integers or class names (names must be in `vocabulary`)."""
    names = _names(values)
    if names is None:
        arr = np.asarray(values).reshape(-1)
        if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            raise BadInput("labels are fractional numbers: give integer class indices or names")
        return arr.astype(np.int64)
    index = {c: i for i, c in enumerate(vocabulary)}
    unknown = sorted(set(names.tolist()) - set(index))
    if unknown:
        raise BadInput(f"{len(unknown)} label names are not classes of the store (e.g. "
                       f"{unknown[0]!r}): add them to the class list given with --classes")
    return np.array([index[n] for n in names.tolist()], dtype=np.int64)


def _vocabulary(current: list[str], given: Any, labels: Any) -> list[str]:
    """The class vocabulary to import with: given, else the store's, else the sorted names."""
    if given is not None:
        return [str(c) for c in np.asarray(given).reshape(-1)]
    names = None if current or labels is None else _names(labels)
    return current if names is None else sorted(set(names.tolist()))


def build_rows(found: dict[str, Any], opts: ImportOptions, vocabulary: list[str],
               default_id: str) -> Rows:
    """Validated `Rows` from the fields of a source file and the options."""
    views = None if "views" not in found else _float_array(found["views"], 3, "views")
    if "features" in found:
        features = _float_array(found["features"], 2, "features")
    else:
        key = _normalised(views, np.arange(len(views)), "views").mean(axis=1)
        features = _normalised(key, np.arange(len(key)), "view means")
    n = len(features)
    ids = opts.ids if opts.ids is not None else found.get("ids")
    if ids is None:
        ids = [f"{default_id}:{i}" for i in range(n)]
    labels = opts.labels if opts.labels is not None else found.get("labels")
    split = opts.split if opts.split is not None else found.get("split", "train")
    if isinstance(split, np.ndarray) and split.ndim == 0:
        split = str(split)
    rows = Rows.make(ids, features, None if labels is None else _labels(labels, vocabulary),
                     split, found.get("sources"), views)
    if views is not None and len(views) != n:
        raise BadInput(f"views has {len(views)} entries for {n} rows: give one per row")
    if opts.normalize:
        rows.features = _normalised(rows.features, rows.ids, "features")
        if rows.views is not None:
            rows.views = _normalised(rows.views, rows.ids, "views")
    return rows


def _provenance(found: dict[str, Any], opts: ImportOptions, dim: int,
                source: Path) -> Provenance | None:
    """The encoder the features claim to come from; None when nothing says."""
    encoder = opts.encoder or found.get("encoder")
    weights = opts.weights or found.get("weights")
    if encoder is None and weights is None:
        return None
    return Provenance(encoder=str(encoder or "external"), weights=str(weights or "unknown"),
                      dim=dim, preprocess={"imported_from": source.name})


def _discard(path: Path, made_dir: bool) -> None:
    """Remove a store this import created but could not fill."""
    if made_dir:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in (MANIFEST_NAME, ".lock"):
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "shards", ignore_errors=True)


def import_features(source: Path | str, store_path: Path | str,
                    opts: ImportOptions | None = None) -> ImportResult:
    """Read, validate and normalise `source`, then append it to the store (created if missing).

    On any error nothing is stored: a store created by this call is removed again.
    """
    opts = opts or ImportOptions()
    source, store_path = Path(source), Path(store_path)
    found = read_source(source, opts.keys)
    exists = (store_path / MANIFEST_NAME).exists()
    store = Store.open(store_path) if exists else None
    given = opts.classes if opts.classes is not None else found.get("classes")
    vocabulary = _vocabulary(store.classes if store else [], given,
                             opts.labels if opts.labels is not None else found.get("labels"))
    rows = build_rows(found, opts, vocabulary, source.name)
    dim = rows.features.shape[1]
    provenance = _provenance(found, opts, dim, source)
    if store is not None:
        if opts.dtype is not None and opts.dtype != store.dtype:
            raise BadInput(f"store {store_path} keeps {store.dtype} on disk: drop --dtype "
                           f"{opts.dtype} or import into a new store")
        made_dir = False
    else:
        made_dir = not store_path.exists()
        store = Store.create(
            store_path, dim=dim, dtype=opts.dtype or "float16",
            provenance=provenance or Provenance("external", "unknown", dim,
                                                preprocess={"imported_from": source.name}),
        )
    try:
        row_ids = store.append(rows, provenance=provenance, classes=vocabulary)
    except TipError:
        if not exists:
            _discard(store_path, made_dir)
        raise
    log.info("imported %d rows from %s into %s", len(row_ids), source, store_path)
    return ImportResult(store=store, row_ids=row_ids, created=not exists)
