"""IVF-Flat inner-product search for many queries at once, as matrix products per list.

FAISS scans an inverted list one query at a time (a dot product per stored vector), which on
a CPU runs at a few GFLOP/s. For a batch of queries the same answer (the nprobe lists the
quantizer picks, every vector in them scored exactly, the top k kept) is cheaper list-major:
group the (query, list) pairs by list and score each list's queries with one matrix product
(BLAS; the lists on a thread per core, `parallel`), keeping each list's top k per query, then
each query's top k of those. The lists are read in place from the FAISS index (zero-copy
views of its codes), so no second copy of the keys is made.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from .parallel import run_all

MIN_QUERIES = 64      # below this FAISS's own scan is as fast
BLOCK_ENTRIES = 1 << 23  # candidates (queries x probes x k) kept per block of queries
PAD = float(np.finfo(np.float32).min)  # the score FAISS gives missing results


class ListScan:
    """Zero-copy views of the lists of an `IndexIVFFlat` (inner product) and their row ids."""

    def __init__(self, ivf: faiss.IndexIVFFlat, row_ids: np.ndarray):
        self._ivf = ivf
        lists = ivf.invlists
        self.sizes = np.array([lists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
        self.vectors, self.ids = [], []
        for i, n in enumerate(self.sizes.tolist()):
            codes = faiss.rev_swig_ptr(lists.get_codes(i), n * ivf.code_size) if n else b""
            inner = faiss.rev_swig_ptr(lists.get_ids(i), n) if n else np.empty(0, np.int64)
            self.vectors.append(torch.from_numpy(
                np.frombuffer(codes, dtype=np.float32).reshape(n, ivf.d)))
            self.ids.append(row_ids[np.asarray(inner, dtype=np.int64)])

    @staticmethod
    def of(index: faiss.IndexIDMap2) -> ListScan | None:
        """A scan over `index`'s lists when it is an inner-product IVF-Flat index, else None."""
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, faiss.IndexIVFFlat) or \
                inner.metric_type != faiss.METRIC_INNER_PRODUCT or \
                not isinstance(faiss.downcast_InvertedLists(inner.invlists),
                               faiss.ArrayInvertedLists):  # lists in memory: views stay valid
            return None
        return ListScan(inner, faiss.vector_to_array(index.id_map).astype(np.int64))

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k sims (B, k) float32 and row ids (B, k) int64 (-FLT_MAX / -1 where fewer),
        best first: the vectors of the nprobe lists nearest each query, as FAISS's search."""
        nprobe = min(int(self._ivf.nprobe), int(self._ivf.nlist))
        sims = np.empty((len(x), k), dtype=np.float32)
        ids = np.empty((len(x), k), dtype=np.int64)
        step = max(1, BLOCK_ENTRIES // (nprobe * k))
        for a in range(0, len(x), step):
            _, probes = self._ivf.quantizer.search(x[a:a + step], nprobe)
            sims[a:a + step], ids[a:a + step] = self._block(x[a:a + step], probes, k)
        return sims, ids

    def _block(self, x: np.ndarray, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` for a block of queries: each probed list's top k for its queries (one
        matrix product per list), then each query's top k of those."""
        b, nprobe = probes.shape
        cand_sims = np.full((b, nprobe, k), PAD, dtype=np.float32)
        cand_ids = np.full((b, nprobe, k), -1, dtype=np.int64)
        query = torch.from_numpy(np.ascontiguousarray(x))
        flat = probes.reshape(-1)
        order = np.argsort(flat, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(flat[order])) + 1)

        def score(group: np.ndarray) -> None:
            lst = int(flat[group[0]])
            n = int(self.sizes[lst]) if lst >= 0 else 0
            if not n:
                return
            who, rank = group // nprobe, group % nprobe
            scores = torch.mm(query[torch.from_numpy(who)], self.vectors[lst].t()).numpy()
            if n > k:
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                cand_sims[who, rank] = np.take_along_axis(scores, top, axis=1)
                cand_ids[who, rank] = self.ids[lst][top]
            else:
                cand_sims[who, rank, :n] = scores
                cand_ids[who, rank, :n] = self.ids[lst]

        run_all(score, groups)
        cand_sims, cand_ids = cand_sims.reshape(b, -1), cand_ids.reshape(b, -1)
        top = np.argpartition(-cand_sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(cand_sims, top, axis=1),
                                                 axis=1, kind="stable"), axis=1)
        return np.take_along_axis(cand_sims, top, axis=1), np.take_along_axis(cand_ids, top, 1)

