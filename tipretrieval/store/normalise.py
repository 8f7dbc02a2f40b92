"""L2 norms and import normalisation of feature rows, in blocks: no float32 copy of the input.

Norms are computed a block of rows at a time (float16 through the fast conversion of
`float16.as_float32`, float64 in float64), so checking or normalising a 128 MB float16 chunk
costs a few MB of scratch instead of a 256 MB float32 copy. Rows whose norm is already 1
within their dtype's rounding are kept as given (bit-exact), only the others are scaled.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadInput
from .float16 import INF_BITS, all_finite, as_float32, convert, magnitude_bits

# A row whose norm is within this of 1 is kept as given (its dtype's rounding of a unit vector
# is within ~1 ulp of norm 1); other rows are scaled.
UNIT_TOLERANCE = {2: 2.0**-10, 4: 2.0**-17, 8: 2.0**-17}
BLOCK_ROWS = 4096


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norms over the last axis of float16/32/64 `x` (float64 for float64, else float32);
    inf or NaN where a row holds inf or NaN, or where its squares overflow."""
    wide = np.float64 if x.dtype == np.float64 else np.float32
    norms = np.empty(x.shape[:-1], dtype=wide)
    scratch = None
    for a in range(0, len(x), BLOCK_ROWS):
        block = half = x[a:a + BLOCK_ROWS]
        if block.dtype == np.float16:
            if scratch is None or scratch.shape != block.shape:
                scratch = np.empty(block.shape, np.float32)
            block = as_float32(block, scratch)
        with np.errstate(over="ignore", invalid="ignore"):
            squares = np.einsum("...i,...i->...", block, block, dtype=wide)
            np.sqrt(squares, out=norms[a:a + len(block)])
        if half.dtype == np.float16 and not all_finite(half):  # the fast cast made them finite
            bad = magnitude_bits(half) >= INF_BITS[2]
            norms[a:a + len(block)][bad.any(axis=-1)] = np.nan
    return norms


def non_finite(x: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Which entries of `norms` (the `row_norms` of `x`) belong to rows holding NaN or inf
    (a finite norm proves a finite row; the rest are checked element by element)."""
    bad = ~np.isfinite(norms)
    if bad.any():
        bad[bad] = ~np.isfinite(x[bad]).all(axis=-1)
    return bad


def unit_rows(x: np.ndarray, ids: np.ndarray, what: str, dtype) -> np.ndarray:
    """`x` (float16/32/64, rows on the first axis) as unit rows in `dtype`: rows already unit
    norm within their dtype's tolerance are kept as given, the others scaled (in float64 for
    float64 input, so values beyond float32's range are fine); BadInput for NaN/inf or
    all-zero rows."""
    return normalised(x, ids, what, dtype)[0]


def normalised(x: np.ndarray, ids: np.ndarray, what: str, dtype, out: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """`unit_rows` of `x` (into `out` when given: `x` itself normalises in place) and their
    `row_norms` (so that a store's check of the rows need not compute them again: reused from
    `x`'s for the rows kept when `x` is already in `dtype`)."""
    norms = row_norms(x)
    _refuse(non_finite(x, norms), ids, what, "contain NaN or inf: drop or recompute those rows")
    maybe_zero = norms == 0  # or tiny values whose squares underflow
    if maybe_zero.any():
        maybe_zero[maybe_zero] = np.abs(x[maybe_zero]).max(axis=-1) == 0
        _refuse(maybe_zero, ids, what,
                "are all zero: drop those rows, they cannot be normalised")
    if out is None:
        out = np.empty(x.shape, dtype=dtype)
    if out is not x:
        with np.errstate(over="ignore"):  # rows beyond the dtype's range are rescaled below
            convert(x, out)
    bad = ~(np.abs(norms - 1.0) <= UNIT_TOLERANCE[x.dtype.itemsize])
    if bad.any():
        y = x[bad].astype(np.float64 if x.dtype == np.float64 else np.float32)
        y /= np.abs(y).max(axis=-1, keepdims=True)
        y /= np.linalg.norm(y, axis=-1, keepdims=True)
        out[bad] = y
    if x.dtype != out.dtype:
        return out, row_norms(out)
    if bad.any():
        norms[bad] = row_norms(out[bad])
    return out, norms


def first_bad(mask: np.ndarray, ids: np.ndarray) -> str:
    """How many rows `mask` marks and which is first, for error messages."""
    i = int(np.flatnonzero(mask)[0])
    return f"{int(mask.sum())} rows (first: row {i}, id {ids[i]!r})"


def rows_of(bad: np.ndarray) -> np.ndarray:
    """A bool per row (first axis): any entry of the row is marked in `bad`."""
    return bad.reshape(bad.shape[0], int(np.prod(bad.shape[1:]))).any(axis=1)


def _refuse(bad: np.ndarray, ids: np.ndarray, what: str, problem: str) -> None:
    """BadInput naming how many rows `bad` marks (any entry of a row) and the first one."""
    rows = rows_of(bad)
    if rows.any():
        raise BadInput(f"{what} of {first_bad(rows, ids)} {problem}")
