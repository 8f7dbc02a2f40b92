"""Classification result files: one `Results` batch per part, written as parquet, h5 or csv."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ...errors import BadInput


@dataclass
class Results:
    """Top-k predictions of N query rows; `logits` (N, C) only when asked for."""

    ids: np.ndarray  # (N,) object array of str
    row_ids: np.ndarray  # (N,) int64 store row ids
    classes: np.ndarray  # (N, k) int64 class indices, best first
    names: np.ndarray  # (N, k) object array of str class names
    probs: np.ndarray  # (N, k) float32 softmax probabilities
    logits: np.ndarray | None = None  # (N, C) float32
    # with evidence E: the E cache keys contributing most to the top class, best first
    evidence_row_ids: np.ndarray | None = None  # (N, E) int64 key store row ids, -1 = padding
    evidence_ids: np.ndarray | None = None      # (N, E) object array of str key ids, "" = padding
    evidence_labels: np.ndarray | None = None   # (N, E) int64 key class, -1 = padding
    evidence_sims: np.ndarray | None = None     # (N, E) float32 x . key, NaN = padding

    def __len__(self) -> int:
        return int(self.row_ids.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.classes.shape[1])

    @property
    def evidence(self) -> int:
        """Evidence keys per row (0 when not computed)."""
        return 0 if self.evidence_ids is None else int(self.evidence_ids.shape[1])

    @classmethod
    def concat(cls, parts: list[Results]) -> Results:
        """Concatenate parts in order (optional columns kept only when every part has them)."""
        if not parts:
            raise ValueError("concat needs at least one Results")

        def join(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return cls(**{f.name: join(f.name) for f in fields(cls)})


# Evidence columns: Results field, arrow type, numpy dtype, CSV column prefix (`<prefix>_<rank>`).
EVIDENCE = (
    ("evidence_row_ids", pa.int64(), np.int64, "evidence_row_id"),
    ("evidence_ids", pa.string(), object, "evidence_id"),
    ("evidence_labels", pa.int64(), np.int64, "evidence_label"),
    ("evidence_sims", pa.float32(), np.float32, "evidence_sim"),
)


class Writer(Protocol):
    """Writes and reads one part file of a format."""

    suffix: str

    def write(self, results: Results, path: Path) -> None: ...

    def read(self, path: Path) -> Results: ...


def _fixed(values: np.ndarray, type_: pa.DataType) -> pa.FixedSizeListArray:
    flat = pa.array(values.reshape(-1), type=type_)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _unfixed(column: pa.ChunkedArray, dtype) -> np.ndarray:
    array = column.combine_chunks()
    width = array.type.list_size
    flat = array.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=dtype).reshape(-1, width)


class ParquetWriter:
    """Parquet with fixed-size list columns (class_ids, class_names, probs, logits)."""

    suffix = ".parquet"

    def write(self, results: Results, path: Path) -> None:
        columns = {
            "id": pa.array(results.ids.tolist(), type=pa.string()),
            "row_id": pa.array(results.row_ids, type=pa.int64()),
            "class_ids": _fixed(results.classes, pa.int64()),
            "class_names": _fixed(results.names, pa.string()),
            "probs": _fixed(results.probs, pa.float32()),
        }
        if results.logits is not None:
            columns["logits"] = _fixed(results.logits, pa.float32())
        if results.evidence:
            for name, type_, _, _ in EVIDENCE:
                columns[name] = _fixed(getattr(results, name), type_)
        pq.write_table(pa.table(columns), path, compression="zstd")

    def read(self, path: Path) -> Results:
        table = pq.read_table(path)
        return Results(
            ids=np.array(table["id"].to_pylist(), dtype=object),
            row_ids=table["row_id"].to_numpy().astype(np.int64),
            classes=_unfixed(table["class_ids"], np.int64),
            names=_unfixed(table["class_names"], object),
            probs=_unfixed(table["probs"], np.float32),
            logits=_unfixed(table["logits"], np.float32) if "logits" in table.column_names
            else None,
            **{name: _unfixed(table[name], dtype) for name, _, dtype, _ in EVIDENCE
               if name in table.column_names},
        )


class H5Writer:
    """HDF5 with one dataset per column; top-k columns are (N, k) arrays."""

    suffix = ".h5"

    def write(self, results: Results, path: Path) -> None:
        text = h5py.string_dtype()
        with h5py.File(path, "w", track_order=False) as f:
            f.create_dataset("id", data=results.ids.astype(object), dtype=text)
            f.create_dataset("row_id", data=results.row_ids.astype(np.int64))
            f.create_dataset("class_ids", data=results.classes.astype(np.int64))
            f.create_dataset("class_names", data=results.names.astype(object), dtype=text)
            f.create_dataset("probs", data=results.probs.astype(np.float32))
            if results.logits is not None:
                f.create_dataset("logits", data=results.logits.astype(np.float32))
            for name, _, dtype, _ in EVIDENCE if results.evidence else ():
                values = getattr(results, name)
                f.create_dataset(name, data=values.astype(dtype),
                                 dtype=text if dtype is object else None)

    def read(self, path: Path) -> Results:
        with h5py.File(path, "r") as f:
            return Results(
                ids=f["id"].asstr()[()].astype(object),
                row_ids=f["row_id"][()],
                classes=f["class_ids"][()],
                names=f["class_names"].asstr()[()].astype(object),
                probs=f["probs"][()],
                logits=f["logits"][()] if "logits" in f else None,
                **{name: f[name].asstr()[()].astype(object) if dtype is object else f[name][()]
                   for name, _, dtype, _ in EVIDENCE if name in f},
            )


class CsvWriter:
    """CSV with flattened columns: id, row_id, class_1, name_1, prob_1, ..., logit_0, ..."""

    suffix = ".csv"

    def write(self, results: Results, path: Path) -> None:
        columns = {"id": pa.array(results.ids.tolist(), type=pa.string()),
                   "row_id": pa.array(results.row_ids, type=pa.int64())}
        for j in range(results.top_k):
            columns[f"class_{j + 1}"] = pa.array(results.classes[:, j], type=pa.int64())
            columns[f"name_{j + 1}"] = pa.array(results.names[:, j].tolist(), type=pa.string())
            columns[f"prob_{j + 1}"] = pa.array(results.probs[:, j], type=pa.float32())
        if results.logits is not None:
            for c in range(results.logits.shape[1]):
                columns[f"logit_{c}"] = pa.array(results.logits[:, c], type=pa.float32())
        for j in range(results.evidence):
            for name, type_, _, prefix in EVIDENCE:
                values = getattr(results, name)[:, j]
                columns[f"{prefix}_{j + 1}"] = pa.array(
                    values.tolist() if type_ == pa.string() else values, type=type_)
        pacsv.write_csv(pa.table(columns), path)

    def read(self, path: Path) -> Results:
        header = path.open().readline().rstrip("\n").replace('"', "").split(",")
        k = sum(name.startswith("class_") for name in header)
        n_logits = sum(name.startswith("logit_") for name in header)
        types = {"id": pa.string(), "row_id": pa.int64()}
        for j in range(1, k + 1):
            types.update({f"class_{j}": pa.int64(), f"name_{j}": pa.string(),
                          f"prob_{j}": pa.float32()})
        types.update({f"logit_{c}": pa.float32() for c in range(n_logits)})
        n_evidence = sum(name.startswith("evidence_id_") for name in header)
        for j in range(1, n_evidence + 1):
            types.update({f"{prefix}_{j}": type_ for _, type_, _, prefix in EVIDENCE})
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False))

        def stack(prefix: str, names: list[str], dtype) -> np.ndarray:
            cols = [table[f"{prefix}{n}"].to_numpy(zero_copy_only=False) for n in names]
            return np.stack(cols, axis=1).astype(dtype) if cols else np.zeros((len(table), 0))

        ranks = [str(j) for j in range(1, k + 1)]
        return Results(
            ids=np.array(table["id"].to_pylist(), dtype=object),
            row_ids=table["row_id"].to_numpy().astype(np.int64),
            classes=stack("class_", ranks, np.int64),
            names=stack("name_", ranks, object),
            probs=stack("prob_", ranks, np.float32),
            logits=stack("logit_", [str(c) for c in range(n_logits)], np.float32)
            if n_logits else None,
            **{name: stack(f"{prefix}_", [str(j) for j in range(1, n_evidence + 1)], dtype)
               for name, _, dtype, prefix in EVIDENCE if n_evidence},
        )


WRITERS: dict[str, Writer] = {"parquet": ParquetWriter(), "h5": H5Writer(), "csv": CsvWriter()}


def writer_for(fmt: str) -> Writer:
    """The writer of output format `fmt`; BadInput naming the choices otherwise."""
    try:
        return WRITERS[fmt]
    except KeyError:
        raise BadInput(
            f"unknown output format {fmt!r}: choose one of {', '.join(WRITERS)}"
        ) from None
