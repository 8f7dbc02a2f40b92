"""Ray Data engine for `extract`: blocks of images encoded by an actor pool, stored by the driver.

The driver plans the job as the local engine does (ids already stored are dropped), splits the
remaining images into blocks of `chunk` images, and lists them as a Ray dataset. Each actor
loads the encoder once and decodes, preprocesses and encodes whole blocks with the local
engine's code (per-image seeded views, so the features do not depend on the engine). It returns
one row per image: features, views, or the decode error. The driver appends each block to the
store once all its images are back (one atomic append), so a kill loses at most the blocks in
flight and a rerun encodes only what is missing.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..provenance import Provenance
from ..util.progress import progress
from ..util.ray_setup import actor_resources, init_ray
from .extract import EncodedBatch, ExtractJob, ExtractOptions, ExtractReport, encode_items
from .resolve import EncoderSpec
from .sources import ImageItem, Source

log = logging.getLogger(__name__)


class BlockEncoder:
    """A Ray actor: loads the encoder once, then encodes whole blocks of images."""

    def __init__(self, spec: EncoderSpec, provenance: dict, device: str, n_views: int,
                 options: dict) -> None:
        self.encoder = spec.load(device)
        Provenance.from_json(provenance).check_compatible(self.encoder.provenance,
                                                          "the actor's encoder's features")
        self.n_views = n_views
        self.options = ExtractOptions(**options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = [self._encode_block(int(b), ids, paths)
                   for b, ids, paths in zip(batch["block"], batch["ids"], batch["paths"],
                                            strict=True)]
        return {k: np.concatenate([c[k] for c in columns]) for k in columns[0]}

    def _encode_block(self, block: int, ids, paths) -> dict[str, np.ndarray]:
        """One row per image of the block: features (and views), or zeros and the error."""
        items = [ImageItem(str(i), Path(p)) for i, p in zip(ids, paths, strict=True)]
        n, dim = len(items), self.encoder.dim
        out = {"block": np.full(n, block, dtype=np.int64), "pos": np.arange(n),
               "features": np.zeros((n, dim), np.float32), "error": np.full(n, "", dtype=object)}
        if self.n_views:
            out["views"] = np.zeros((n, self.n_views, dim), np.float32)
        for enc in encode_items(self.encoder, items, self.n_views, self.options):
            if enc.done:
                out["features"][enc.done] = enc.features
                if self.n_views:
                    out["views"][enc.done] = enc.views
            for i, err in enc.failed:
                out["error"][i] = err
        return out


def _as_batch(parts: list[dict[str, np.ndarray]]) -> EncodedBatch:
    """A whole block's per-image rows (in any order) as one EncodedBatch in block order."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["pos"])
    cols = {k: v[order] for k, v in cols.items()}
    ok = cols["error"] == ""
    views = cols.get("views")
    return EncodedBatch(
        done=[int(i) for i in cols["pos"][ok]],
        features=cols["features"][ok],
        views=None if views is None else views[ok],
        failed=[(int(i), str(e)) for i, e in zip(cols["pos"][~ok], cols["error"][~ok],
                                                  strict=True)],
    )


def completed_blocks(batches: Iterable[dict[str, np.ndarray]],
                     sizes: list[int]) -> Iterator[tuple[int, EncodedBatch]]:
    """Regroup per-image rows by block; yield each block once all `sizes[block]` rows are back."""
    parts: dict[int, list[dict[str, np.ndarray]]] = defaultdict(list)
    seen: Counter[int] = Counter()
    for batch in batches:
        for block in np.unique(batch["block"]):
            mask = batch["block"] == block
            parts[int(block)].append({k: v[mask] for k, v in batch.items()})
            seen[int(block)] += int(mask.sum())
            if seen[int(block)] == sizes[int(block)]:
                yield int(block), _as_batch(parts.pop(int(block)))


def _actor_cpus(actors: int, gpus: float) -> int:
    """CPUs per actor: 1 on CPU clusters; on GPU ones, a share of the CPUs for decoding."""
    import ray  # optional dependency (the `ray` extra)

    if not gpus:
        return 1
    return max(1, (int(ray.cluster_resources().get("CPU", 1)) - 1) // actors)


def _encoded_blocks(job: ExtractJob, blocks: list[list[ImageItem]], spec: EncoderSpec,
                    provenance: Provenance) -> Iterator[tuple[int, EncodedBatch]]:
    """Encode `blocks` on a Ray actor pool; yield each block as soon as it is complete."""
    import ray  # optional dependency (the `ray` extra)

    if not blocks:
        return
    actors, gpus = actor_resources()
    actors = min(actors, len(blocks))
    cpus = _actor_cpus(actors, gpus)
    log.info("ray: %d blocks on %d actors (%d CPU, %g GPU each)", len(blocks), actors, cpus, gpus)
    actor_opts = asdict(job.options) | {"workers": cpus - 1, "progress": False}
    results = ray.data.from_items([
        {"block": b, "ids": [it.id for it in items],
         "paths": [str(Path(it.path).resolve()) for it in items]}
        for b, items in enumerate(blocks)
    ]).map_batches(
        BlockEncoder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus, num_gpus=gpus,
        fn_constructor_args=(spec, provenance.to_json(), "cuda" if gpus else "cpu",
                             job.n_views, actor_opts),
    )
    yield from completed_blocks(results.iter_batches(batch_size=None, batch_format="numpy"),
                                [len(b) for b in blocks])


def extract_ray(
    source: Source,
    store_path: Path | str,
    spec: EncoderSpec,
    options: ExtractOptions | None = None,
    report_path: Path | str | None = None,
    id_prefix: str = "",
    address: str | None = None,
) -> ExtractReport:
    """`extract` on Ray (local, or the cluster at `address`): same rows, same report."""
    spec = spec.resolved()
    init_ray(address)
    opts = options or ExtractOptions()
    encoder = spec.load("cpu")  # the driver needs only the provenance and the transforms
    job = ExtractJob.plan(source, Path(store_path), encoder, opts, id_prefix)
    blocks = [job.todo[s:s + opts.chunk] for s in range(0, len(job.todo), opts.chunk)]
    writer = job.writer(report_path, opts.chunk)
    with progress(len(job.todo), "extract (ray)", unit="img", disable=not opts.progress) as bar:
        for block, batch in _encoded_blocks(job, blocks, spec, encoder.provenance):
            job.take(blocks[block], batch, writer)
            writer.flush()  # one atomic append per block
            bar.update(len(blocks[block]))
    order = {it.id: i for i, it in enumerate(job.todo)}
    job.report.bad.sort(key=lambda bad: order[bad.id])  # the local engine's order
    writer.flush()
    return job.report
