"""`--index auto`: pick a FAISS index from the row count, the dimension and a memory budget.

A transcription of autofaiss 2.18.0 (Apache-2.0), `autofaiss/external/optimize.py`:
`get_optimal_index_keys_v2` (not memory-mappable, no forced PQ, CPU), `get_optimal_nb_clusters`,
`get_optimal_ivf`, `get_optimal_quantization` and the IVF-Flat size estimate of
`autofaiss/external/metadata.py`; the first (most promising) key of each list is returned.
autofaiss itself is not a dependency: it pins numpy<2 and pandas<3 (this project runs numpy 2)
and pulls in embedding-reader and fire for what is a few lines of arithmetic.

The rule: under 1,000 rows an exact `Flat` index; under 10,000 `HNSW15`; otherwise HNSW with
M = floor((budget / (4 n) - d) / 2) capped at 32 when M >= 8 fits the budget; otherwise an
unquantised `IVF<c>,Flat` when n < 1,000,000 and it fits; otherwise `OPQ<pq>_<y>,IVF<c>[_HNSW32],
PQ<pq>x8` with the largest PQ size whose compression (4 d / (pq + 8)) meets the budget.
"""

from __future__ import annotations

import re
from math import floor, log2, sqrt

from ...errors import BadInput

FLAT_THRESHOLD = 1_000
QUANTIZATION_THRESHOLD = 10_000
IVF_FLAT_THRESHOLD = 1_000_000
PQ_VALUES = (256, 128, 64, 48, 32, 24, 16, 8, 4)
DEFAULT_BUDGET = "16G"  # autofaiss's default max_index_memory_usage
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "T": 1 << 40, "TB": 1 << 40}


def memory_bytes(text: str) -> int:
    """'16G', '512MB', '2e9' -> bytes; BadInput naming the format otherwise."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?B?)\s*", str(text).upper())
    if not match:
        raise BadInput(f"memory budget {text!r} is not a size: write e.g. 16G, 512M or 2e9")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise BadInput(f"memory budget {text!r} is not positive: give e.g. 16G")
    return int(value)


def nb_clusters(n: int) -> int:
    """autofaiss's first choice of IVF list count for n vectors (FAISS wiki guidelines)."""
    if n < 1_000_000:
        return round(2 ** round(log2(4 * sqrt(n))))
    if n < 10_000_000:
        return 16_384
    if n < 300_000_000:
        return 65_536
    return 2 ** 17


def choose_index(n: int, dim: int, budget: str = DEFAULT_BUDGET) -> str:
    """The FAISS factory string autofaiss would try first for n vectors of `dim` in `budget`."""
    if n < FLAT_THRESHOLD:
        return "Flat"
    if n < QUANTIZATION_THRESHOLD:
        return "HNSW15"
    size = memory_bytes(budget)
    m_hnsw = int(floor((size / (4 * n) - dim) / 2))
    if m_hnsw >= 8:
        return f"HNSW{min(m_hnsw, 32)}"
    clusters = nb_clusters(n)
    if n < IVF_FLAT_THRESHOLD and n * dim * 4 + clusters * dim * 4 <= size:
        return f"IVF{clusters},Flat"
    target = 4.0 * n * dim / size
    for pq in PQ_VALUES:
        if pq < dim and (4 * dim) / (pq + 8) >= target:
            y = (min(dim // pq, 6) + 1) * pq
            coarse = f"IVF{clusters}" if clusters < 1000 else f"IVF{clusters}_HNSW32"
            return f"OPQ{pq}_{y},{coarse},PQ{pq}x8"
    raise BadInput(f"no index holds {n} x {dim} vectors in {budget}",
                   "raise `memory=` or give `spec=` explicitly")


def train_size(spec: str, n: int) -> int:
    """Training vectors for `spec`: 100 per IVF list (autofaiss), capped at n; 0 if untrained."""
    match = re.search(r"IVF(\d+)", spec)
    return 0 if match is None else min(100 * int(match.group(1)), n)
