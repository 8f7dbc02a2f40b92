"""Resumable batch classification of a query store: committed parts plus a journal.

Part `i` holds the query rows whose store row id lies in `[i * batch_size, (i + 1) * batch_size)`,
so part boundaries depend only on the input, never on timing. Each part is written to a temporary
file, fsynced and renamed, then `journal.json` (replaced atomically) lists it as committed. A
rerun skips committed parts and rewrites the others, so the finished output holds every query
row exactly once and is byte-identical to an uninterrupted run's.

Modules: `options` (what to compute), `journal` (job identity, committed parts, resume rules),
`parts` (one part: rows in, results out, durable file), `output` (parquet/h5/csv writers),
`local` and `ray_engine` (the two engines), `api` (`classify_store`, `read_output`, images).
"""

from .api import QUERY_STORE, classify_store, iter_output, read_output, store_from_images
from .journal import JOURNAL, SUCCESS, Journal
from .options import ClassifyOptions
from .output import Results

__all__ = [
    "JOURNAL", "QUERY_STORE", "SUCCESS", "ClassifyOptions", "Journal", "Results",
    "classify_store", "iter_output", "read_output", "store_from_images",
]
