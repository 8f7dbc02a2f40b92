"""`KeyIndex`: a FAISS inner-product index over cache keys, addressed by int64 store row ids.

The CPU index (an `IndexIDMap2` around any factory spec built with METRIC_INNER_PRODUCT) is
the source of truth: it is what `save` writes and what `add`/`remove` change. When FAISS
reports GPUs (`faiss.get_num_gpus() > 0`, false on faiss-cpu) a GPU copy serves searches,
sharded over all GPUs when there are several; it is rebuilt after a removal. GPU top-k is
limited to k <= 2048, so larger k are answered by the CPU index. On the CPU, batches of
queries against an IVF-Flat index are answered list-major with matrix products (`ivf_scan`):
the same lists and exact scores as FAISS's scan, several times faster.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from ..errors import BadInput, CorruptData
from ..util.atomic import atomic_path
from .ivf_scan import MIN_QUERIES, ListScan

log = logging.getLogger(__name__)

GPU_MAX_K = 2048


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 on faiss-cpu builds)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _as_matrix(x: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise BadInput(f"{what} has shape {x.shape}, expected {want}: pass 2-D float features")
    return np.ascontiguousarray(x)


def _as_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
    if ids.shape[0] != n:
        raise BadInput(f"{ids.shape[0]} ids for {n} keys: give one int64 row id per key")
    if np.unique(ids).shape[0] != n:
        raise BadInput("key ids are not unique: give each key its own row id")
    return ids


class KeyIndex:
    """Inner-product search over keys with int64 ids; CPU copy authoritative, GPU when present."""

    def __init__(self, cpu_index: faiss.IndexIDMap2, spec: str, use_gpu: bool | None = None):
        self._cpu = cpu_index
        self.spec = spec
        self.use_gpu = gpu_count() > 0 if use_gpu is None else bool(use_gpu)
        if self.use_gpu and gpu_count() == 0:
            raise BadInput("use_gpu was requested but FAISS sees no GPU: install faiss-gpu "
                           "on a GPU machine or pass use_gpu=False")
        self._gpu = None
        self._scan: ListScan | None = None  # views of the lists: dropped whenever they change
        self._sync_gpu()

    @classmethod
    def build(cls, keys: np.ndarray, ids: np.ndarray, spec: str = "Flat",
              use_gpu: bool | None = None) -> KeyIndex:
        """Index `keys` (M, D) under `ids` (M,) with a FAISS factory `spec`, trained on the keys."""
        keys = _as_matrix(keys, None, "keys")
        ids = _as_ids(ids, keys.shape[0])
        try:
            inner = faiss.index_factory(keys.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise BadInput(f"bad FAISS index spec {spec!r}: use a factory string such as "
                           "'Flat', 'IVF1024,Flat', 'HNSW32' or 'IVF256,PQ32'") from err
        if not inner.is_trained:
            try:
                inner.train(keys)
            except RuntimeError as err:
                raise BadInput(f"cannot train index {spec!r} on {len(keys)} keys: use fewer "
                               "lists/centroids or the exact 'Flat' index") from err
        index = faiss.IndexIDMap2(inner)
        if len(keys):
            index.add_with_ids(keys, ids)
        return cls(index, spec, use_gpu)

    @property
    def ntotal(self) -> int:
        """Number of keys in the index."""
        return int(self._cpu.ntotal)

    @property
    def dim(self) -> int:
        """Key dimension D."""
        return int(self._cpu.d)

    @property
    def exact_sims(self) -> bool:
        """True when `search` scores keys as stored, uncompressed (Flat and IVF-Flat), so its
        sims are the float32 inner products themselves; quantised codes give estimates."""
        return isinstance(faiss.downcast_index(self._cpu.index),
                          (faiss.IndexFlat, faiss.IndexIVFFlat))

    def ids(self) -> np.ndarray:
        """All row ids in the index, in insertion order (int64)."""
        return faiss.vector_to_array(self._cpu.id_map).astype(np.int64)

    def set_params(self, params: str) -> None:
        """Set search-time parameters, e.g. 'nprobe=32' (IVF) or 'efSearch=128' (HNSW)."""
        try:
            faiss.ParameterSpace().set_index_parameters(self._cpu, params)
            if self._gpu is not None:
                faiss.GpuParameterSpace().set_index_parameters(self._gpu, params)
        except RuntimeError as err:
            raise BadInput(f"bad index parameters {params!r} for {self.spec!r}: use "
                           "'nprobe=N' for IVF or 'efSearch=N' for HNSW") from err

    def search(self, x: np.ndarray, k: int, selector: faiss.IDSelector | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: sims (B, k) float32, ids (B, k) int64 (-1 where fewer).

        `selector` (over row ids) restricts the search to the ids it selects, on the CPU index.
        """
        x = _as_matrix(x, self.dim, "queries")
        if k < 1:
            raise BadInput(f"k is {k}: ask for at least one neighbour")
        if selector is not None:
            sims, ids = self._cpu.search(x, int(k), params=_selecting(self._cpu.index, selector))
            return sims.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)
        gpu = self._gpu is not None and k <= GPU_MAX_K
        if not gpu and len(x) >= MIN_QUERIES:
            if self._scan is None:
                self._scan = ListScan.of(self._cpu)
            if self._scan is not None:
                return self._scan.search(x, int(k))
        sims, ids = (self._gpu if gpu else self._cpu).search(x, int(k))
        return sims.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Add keys under new row ids (no rebuild); ids already present are refused."""
        keys = _as_matrix(keys, self.dim, "keys")
        ids = _as_ids(ids, keys.shape[0])
        if self.ntotal and len(ids) and ids.min() <= self.ids().max():
            clash = ids[np.isin(ids, self.ids())]  # a lookup table over dense row ids: O(M)
        else:  # ids above every indexed id (appends in row-id order) cannot clash
            clash = ids[:0]
        if clash.size:
            raise BadInput(f"{clash.size} ids are already indexed (e.g. {clash[0]}): "
                           "remove them first or use new row ids")
        if not len(keys):
            return
        self._scan = None
        self._cpu.add_with_ids(keys, ids)
        if self._gpu is not None:
            self._gpu.add_with_ids(keys, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove keys by row id; returns how many were removed; the GPU copy is rebuilt."""
        ids = np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
        self._scan = None
        if isinstance(faiss.downcast_index(self._cpu.index), faiss.IndexFlatCodes):
            removed = int(self._cpu.remove_ids(faiss.IDSelectorBatch(ids)))
        else:
            removed = self._rebuild_without(ids)
        self._sync_gpu()
        return removed

    def _rebuild_without(self, ids: np.ndarray) -> int:
        """Removal for IVF/HNSW (whose inner ids do not compact): re-add the remaining keys.

        Keys are reconstructed from the index: exact for flat storage, decoded for quantised.
        """
        all_ids = self.ids()
        keep = ~np.isin(all_ids, ids)
        if keep.all():
            return 0
        ivf = faiss.try_extract_index_ivf(self._cpu.index)
        if ivf is not None:
            ivf.make_direct_map()
        keys = self._cpu.index.reconstruct_n(0, self.ntotal)[keep]
        inner = faiss.clone_index(self._cpu.index)
        inner.reset()
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(keys, all_ids[keep])
        self._cpu = index
        return int((~keep).sum())

    def save(self, path: Path | str) -> None:
        """Write the CPU index to `path` atomically."""
        with atomic_path(path) as tmp:
            faiss.write_index(self._cpu, str(tmp))

    @classmethod
    def load(cls, path: Path | str, use_gpu: bool | None = None) -> KeyIndex:
        """Read an index written by `save`; raises CorruptData if it is missing or unreadable."""
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise CorruptData(f"cannot read index {path}: rebuild the cache") from err
        if not isinstance(index, faiss.IndexIDMap2):
            raise CorruptData(f"{path} is not a tipretrieval key index: rebuild the cache")
        return cls(index, _spec_of(index), use_gpu)

    def _sync_gpu(self) -> None:
        """(Re)build the GPU copy of the CPU index: one GPU, or sharded over several."""
        self._gpu = None
        if not self.use_gpu:
            return
        try:
            if gpu_count() > 1:
                options = faiss.GpuMultipleClonerOptions()
                options.shard = True
                self._gpu = faiss.index_cpu_to_all_gpus(self._cpu, co=options)
            else:
                self._resources = faiss.StandardGpuResources()
                self._gpu = faiss.index_cpu_to_gpu(self._resources, 0, self._cpu)
        except RuntimeError as err:
            log.warning("index %s has no GPU version (%s); searching on CPU", self.spec, err)
            return
        log.info("key index on %d GPU(s)", gpu_count())


def _selecting(inner: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters carrying `selector` and the index's current nprobe / efSearch."""
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    base = faiss.downcast_index(inner)
    if isinstance(base, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=base.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


def _spec_of(index: faiss.IndexIDMap2) -> str:
    """A readable description of a loaded index (factory strings are not stored by FAISS)."""
    return type(faiss.downcast_index(index.index)).__name__
