"""Jobs over a cache and a store: evaluation tables (`evaluate`) and resumable batch
classification with its local and Ray engines (`classify`).

May import: everything below it (contracts, `util`, `store`, `encode`, `method`, `cache`);
never `demo` or `cli`.
"""
