"""Import precomputed features (.npy, .npz, .pt, .h5) into a store, validated and normalised."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import BadInput
from ..provenance import Provenance
from ..rows import Rows
from .dump_read import UNREADABLE
from .hold import hold
from .normalise import unit_rows
from .store import Store
from .validate import DuplicateIds, check_vectors

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
    if hasattr(value, "detach"):  # a torch tensor, in its own precision (bfloat16: float32)
        value = value.detach().cpu()
        return value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind == "S":
            return np.char.decode(arr, "utf-8")
        if arr.dtype.kind == "O" and any(isinstance(v, bytes) for v in arr.reshape(-1)):
            return np.array([v.decode("utf-8") if isinstance(v, bytes) else v
                             for v in arr.reshape(-1)], dtype=object).reshape(arr.shape)
        return arr
    return value


def _read_h5(path: Path, names: set[str]) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        out = {k: v for k, v in f.attrs.items() if k in names}
        for key in names & set(f.keys()):
            ds = f[key]
            if not isinstance(ds, h5py.Dataset):
                raise BadInput(f"{key!r} in {path} is an HDF5 {type(ds).__name__.lower()}, not "
                               f"an array", f"name a dataset for {key!r} with `keys=`")
            out[key] = ds[()]
        return out


def _read_pt(path: Path) -> dict[str, Any]:
    import torch  # start-up time: only .pt sources need torch (seconds to import)

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable or unsafe files
        raise BadInput(f"cannot load {path} with torch ({_reason(exc)}): save a dict of "
                       "tensors, lists and strings with torch.save") from exc
    if hasattr(obj, "detach"):
        return {"features": obj}
    if not isinstance(obj, dict):
        raise BadInput(f"{path} holds a {type(obj).__name__}: save a dict such as "
                       "{'features': tensor, 'labels': tensor, 'ids': [...]}")
    return obj


def _reason(exc: BaseException) -> str:
    """An exception as one line: its message, or its type when the message is empty."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


def _check_magic(path: Path, suffix: str) -> None:
    """BadInput for an empty file, or a .npy/.npz whose first bytes are not that format's."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise BadInput(f"source {path} is empty: check that it was written completely")
    magic = _MAGIC.get(suffix)
    if magic and not head.startswith(magic):
        raise BadInput(f"source {path} is not a {suffix} file (it does not start with "
                       f"{magic!r}): save it with numpy.{'save' if suffix == '.npy' else 'savez'}")


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
        _check_magic(path, suffix)
        if suffix == ".npy":
            raw = {keys["features"]: np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        elif suffix in (".pt", ".pth"):
            raw = _read_pt(path)
        else:
            raw = _read_h5(path, set(keys.values()))
    except (*UNREADABLE, RuntimeError) as exc:  # RuntimeError: HDF5, torch on damaged files
        raise BadInput(f"cannot read {path} ({_reason(exc)}): check that it is a valid "
                       f"{suffix} file") from exc
    found = {}
    for name, key in keys.items():
        if key in raw:
            try:
                found[name] = _numpy(raw[key])
            except UnicodeDecodeError as exc:
                raise BadInput(f"{name} in {path} are bytes that are not UTF-8 ({exc.reason} "
                               f"at byte {exc.start}): store them as UTF-8 text") from exc
    if "features" not in found and "views" not in found:
        raise BadInput(f"{path} has no {keys['features']!r} array (it has {sorted(raw)})",
                       "name the features array with `keys=` features=NAME")
    return found


def _float_array(value: Any, ndim: int, what: str) -> np.ndarray:
    """`value` as a floating-point array in its own precision (float16/32/64)."""
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise BadInput(f"{what} have dtype {arr.dtype}: give floating-point {what}")
    if arr.ndim != ndim:
        raise BadInput(f"{what} have shape {arr.shape}: give a {ndim}-D array")
    return arr.astype(np.float64) if arr.dtype.itemsize > 8 else arr


def _unit(x: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """`x` as float32 unit rows (`normalise.unit_rows`: unit rows kept exactly)."""
    return unit_rows(x, ids, what, np.float32)


def _as_float32(x: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """`x` as float32 for --require-normalized: BadInput unless finite and unit-norm first
    (so out-of-range values are reported as unnormalised, not as inf after the cast)."""
    check_vectors(x, ids, what, normalised=True)
    return x.astype(np.float32)


def _names(values: Any) -> np.ndarray | None:
    """Label values as class-name strings, or None when they are class indices."""
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind in "iufb":
        return None
    names = arr.astype(str)
    return None if np.char.isdigit(np.char.lstrip(names, "-")).all() else names


def _labels(values: Any, vocabulary: list[str]) -> np.ndarray:
    """Label indices from labels given as integers or as strings.

    Numbers are class indices. Strings are class names when any of them is a name of
    `vocabulary` (then all must be); otherwise strings of digits are indices. So a class
    named "0" is matched by name, never read as index 0.
    """
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all((arr == np.round(arr)) & (np.abs(arr) < 2.0**53)):
            raise BadInput("labels are fractional numbers: give integer class indices or names")
        return arr.astype(np.int64)
    names = arr.astype(str)
    index = {c: i for i, c in enumerate(vocabulary)}
    known = np.array([n in index for n in names.tolist()], dtype=bool)
    if not known.any() and _names(names) is None:
        return np.array([int(n) for n in names.tolist()], dtype=np.int64)
    unknown = sorted(set(names[~known].tolist()))
    if unknown:
        raise BadInput(f"{len(unknown)} label names are not classes of the store (e.g. "
                       f"{unknown[0]!r})", "add them to the class list given as `classes=`")
    return np.array([index[n] for n in names.tolist()], dtype=np.int64)


def _vocabulary(current: list[str], given: Any, labels: Any, new_store: bool = False
                ) -> list[str]:
    """The class vocabulary to import with: given, else the store's, else the sorted names;
    integer labels into a new store without class names name the classes "0".."C-1"."""
    if given is not None:
        return [str(c) for c in np.asarray(given).reshape(-1)]
    names = None if current or labels is None else _names(labels)
    if names is not None:
        return sorted(set(names.tolist()))
    if new_store and labels is not None and np.size(labels):
        top = int(np.asarray(labels).reshape(-1).astype(np.float64).max())
        return [str(i) for i in range(top + 1)]
    return current


def build_rows(found: dict[str, Any], opts: ImportOptions, vocabulary: list[str],
               default_id: str) -> Rows:
    """Validated `Rows` from the fields of a source file and the options."""
    views = None if "views" not in found else _float_array(found["views"], 3, "views")
    unit = _unit if opts.normalize else _as_float32
    if "features" in found:
        features = _float_array(found["features"], 2, "features")
    else:
        key = _unit(views, np.arange(len(views)), "views").mean(axis=1)
        features = _unit(key, np.arange(len(key)), "view means")
    n = len(features)
    ids = opts.ids if opts.ids is not None else found.get("ids")
    if ids is None:
        ids = [f"{default_id}:{i}" for i in range(n)]
    labels = opts.labels if opts.labels is not None else found.get("labels")
    split = opts.split if opts.split is not None else found.get("split", "train")
    if isinstance(split, np.ndarray) and split.ndim == 0:
        split = str(split)
    rows = Rows.make(ids, np.zeros((n, 0), np.float32),
                     None if labels is None else _labels(labels, vocabulary),
                     split, found.get("sources"))
    if views is not None and len(views) != n:
        raise BadInput(f"views has {len(views)} entries for {n} rows: give one per row")
    rows.features = unit(features, rows.ids, "features")
    if views is not None:
        rows.views = unit(views, rows.ids, "views")
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


def import_features(source: Path | str, store_path: Path | str,
                    opts: ImportOptions | None = None) -> ImportResult:
    """Read, validate and normalise `source`, then append it to the store (created if missing).

    The store is created (when missing) and filled under one hold of its writer lock, so a
    concurrent import of the same new store waits and then appends. On any error nothing is
    stored: a store this call created is removed again (its folder too when this call made it).
    """
    opts = opts or ImportOptions()
    source, store_path = Path(source), Path(store_path)
    found = read_source(source, opts.keys)
    with hold(store_path) as held:
        try:
            rows, provenance, vocabulary = _prepare(found, opts, held.store, source)
            store = held.store or held.create(dim=rows.features.shape[1],
                                              dtype=opts.dtype or "float16",
                                              provenance=provenance or _external(rows, source))
            row_ids = store.append(rows, provenance=provenance, classes=vocabulary)
        except DuplicateIds as exc:
            if opts.ids is None and "ids" not in found:
                raise DuplicateIds(f"{exc} (ids default to '{source.name}:ROW'; a source with "
                                   "the same file name was imported before)",
                                   "give ids with `ids=` or an 'ids' array") from exc
            raise
    log.info("imported %d rows from %s into %s", len(row_ids), source, store_path)
    return ImportResult(store=store, row_ids=row_ids, created=held.created)


def _external(rows: Rows, source: Path) -> Provenance:
    return Provenance("external", "unknown", rows.features.shape[1],
                      preprocess={"imported_from": source.name})


def _prepare(found: dict[str, Any], opts: ImportOptions, store: Store | None,
             source: Path) -> tuple[Rows, Provenance | None, list[str]]:
    """The rows to append to `store` (None: a new store), the encoder they claim and the
    class vocabulary their labels refer to."""
    given = opts.classes if opts.classes is not None else found.get("classes")
    labels = opts.labels if opts.labels is not None else found.get("labels")
    vocabulary = _vocabulary(store.classes if store else [], given, labels,
                             new_store=store is None)
    rows = build_rows(found, opts, vocabulary, source.name)
    if store is not None and opts.dtype is not None and opts.dtype != store.dtype:
        raise BadInput(f"store {store.path} keeps {store.dtype} on disk",
                       f"drop `dtype=` {opts.dtype} or import into a new store")
    return rows, _provenance(found, opts, rows.features.shape[1], source), vocabulary
