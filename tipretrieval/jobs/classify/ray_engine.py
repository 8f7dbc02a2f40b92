"""Ray Data engine for `classify`: part ranges as rows, an actor pool holding the cache.

The driver plans the same row-id parts as the local engine and lists the uncommitted ones as a
Ray dataset. Each actor receives the cache the driver loaded (so the whole job sees one cache
generation), opens the query store once, and for every part reads its rows from the shards,
classifies them and writes the part file durably; the driver commits each finished part to the
journal. The part files are the local engine's, byte for byte.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

import numpy as np

from ...store.store import Store
from ...util.progress import progress
from ...util.ray_setup import actor_resources, init_ray
from .evidence import KeyIds
from .journal import JobSpec, Journal, PartRecord
from .parts import classify_rows, part_ranges, query_rows, read_part, write_part

log = logging.getLogger(__name__)
_FIELDS = [f.name for f in fields(PartRecord)]


class PartClassifier:
    """A Ray actor: classifies parts of the query store with the cache it was given."""

    def __init__(self, cache_ref, store_path: str, out: str, spec: dict) -> None:
        import ray  # optional dependency

        self.cache = ray.get(cache_ref)
        self.store = Store.open(store_path)
        self.out = Path(out)
        self.spec = JobSpec.from_json(spec)
        self.key_ids = KeyIds.of(self.cache) if self.spec.options.evidence else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done: dict[str, list] = {k: [] for k in _FIELDS}
        options = self.spec.options
        for index, start, stop in zip(batch["index"], batch["start"], batch["stop"], strict=True):
            rows = read_part(self.store, int(start), int(stop), options.split)
            if not len(rows):
                continue
            record = write_part(self.out, self.spec, int(index), int(start), int(stop),
                                classify_rows(self.cache, rows, options,
                                                              self.key_ids))
            for key in done:
                done[key].append(getattr(record, key))
        return {k: np.asarray(v) for k, v in done.items()}


def run_ray(cache, store, out: Path, journal: Journal, *, address: str | None = None,
            show_progress: bool = True) -> None:
    """Classify the parts `journal` lacks on Ray, committing each as it finishes."""
    import ray  # optional dependency

    init_ray(address)
    spec = journal.spec
    todo = [{"index": i, "start": s, "stop": e}
            for i, s, e in part_ranges(journal.store_rows, spec.options.batch_size)
            if i not in journal.parts]
    if not todo:
        return
    actors, gpus = actor_resources()
    actors = min(actors, len(todo))
    log.info("ray: %d parts on %d actors (%g GPU each)", len(todo), actors, gpus)
    results = ray.data.from_items(todo).map_batches(
        PartClassifier, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1, num_gpus=gpus,
        fn_constructor_args=(ray.put(cache), str(store.path), str(out), spec.to_json()),
    )
    with progress(query_rows(store, spec.options.split), "classify (ray)",
                  disable=not show_progress) as bar:
        bar.update(sum(p.rows for p in journal.parts.values()))
        for row in results.iter_rows():
            record = PartRecord(**{k: str(v) if k in ("file", "sha256") else int(v)
                                   for k, v in row.items() if k in _FIELDS})
            journal.commit(out, record)
            bar.update(record.rows)
