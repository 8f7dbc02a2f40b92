"""Search over a store: a persisted FAISS index of its rows (`index`), chosen automatically
from the row count and a memory budget (`choose`, autofaiss's rule), and nearest-row queries by
text, image or stored row (`search`).

May import: everything below `jobs` (contracts, `util`, `store`, `encode`, `method`).
"""

from .choose import choose_index
from .index import StoreIndex, index_dir
from .search import Hits, Query, describe, search

__all__ = ["Hits", "Query", "StoreIndex", "choose_index", "describe", "index_dir", "search"]
