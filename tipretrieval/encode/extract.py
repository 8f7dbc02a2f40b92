"""Images -> CLIP features in the store, resumably, with a report of the files that failed.

Worker processes decode and preprocess into small uint8 batches; the main process gathers them
on the device into large model batches.
Encoded rows are appended in chunks (each append is atomic), so a crash or kill loses at most
the chunk in flight, and a rerun skips the ids already stored. The planning (`ExtractJob`) and
the decode-and-encode loop (`encode_items`) are shared with the Ray engine (`ray_extract.py`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import BadInput
from ..rows import Rows
from ..store.hold import hold
from ..store.store import Store
from ..util.atomic import write_json
from ..util.progress import progress
from .model import Encoder
from .sources import ImageItem, Source
from .transforms import decode_image, eval_pixels, image_seed, make_views, view_pixels

log = logging.getLogger(__name__)

VIEW_SPLIT = "train"
WORKER_TENSORS = 32  # images (or views) per worker hand-over: keeps the pipeline's start short


def default_workers() -> int:
    """Decoding workers: all cores but one, at most 16."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


@dataclass
class ExtractOptions:
    """How to encode one source: its split, augmented views, batching and seed."""

    split: str = "train"
    views: int = 10
    batch_size: int = 256
    workers: int = field(default_factory=default_workers)
    seed: int = 0
    chunk: int = 4096
    progress: bool = True


@dataclass
class BadFile:
    """A file that could not be decoded, and why."""

    id: str
    path: str
    error: str


@dataclass
class ExtractReport:
    """What one `extract` run did: counts and every file it had to skip."""

    source: str
    split: str
    total: int
    already_stored: int = 0
    encoded: int = 0
    bad: list[BadFile] = field(default_factory=list)

    def save(self, path: Path) -> None:
        write_json(path, asdict(self) | {"bad_count": len(self.bad)})


class _ImageDataset(Dataset):
    """Decodes and preprocesses one image; a failure is returned, never raised."""

    def __init__(self, items: list[ImageItem], transform, n_views: int, seed: int):
        self.items, self.transform, self.n_views, self.seed = items, transform, n_views, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            img = decode_image(item.path)
            if self.n_views:
                return i, make_views(img, self.transform, self.n_views,
                                     image_seed(self.seed, item.id)), None
            return i, self.transform(img), None
        except Exception as exc:  # any undecodable file is reported, not fatal
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate(batch):
    good = [(i, x) for i, x, err in batch if err is None]
    bad = [(i, err) for i, _, err in batch if err is not None]
    tensor = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], tensor, bad


def open_or_create(path: Path, encoder: Encoder, classes: list[str]) -> Store:
    """Open the store at `path` (checking its encoder) or create it for this encoder; under one
    hold of the writer lock, so a concurrent extract creating the same store waits, then opens."""
    with hold(path) as held:
        if held.store is None:
            return held.create(dim=encoder.dim, provenance=encoder.provenance, classes=classes)
    held.store.provenance.check_compatible(encoder.provenance, "these images' features")
    return held.store


def _label_ids(store: Store, source: Source) -> dict[str, int]:
    """Class name -> store class index, adding the source's new classes to the vocabulary."""
    missing = [c for c in source.classes if c not in store.classes]
    if missing:
        store.add_classes(missing)
        store = store.refresh()
    return {name: i for i, name in enumerate(store.classes)}


def _pending(store: Store, items: list[ImageItem], split: str) -> list[ImageItem]:
    """Items not yet stored; refuses ids already stored under another split."""
    ids = np.array([it.id for it in items], dtype=object)
    exists = store.existing_ids(ids)
    if exists.any():
        stored = store.select(ids=ids[exists])
        clash = sorted({s for s in stored.splits if s != split})
        if clash:
            raise BadInput(
                f"{int(exists.sum())} image ids of this source are already stored under split "
                f"{clash[0]!r}, not {split!r}", "use `id_prefix=` to give this source distinct ids"
            )
    return [it for it, done in zip(items, exists, strict=True) if not done]


class ChunkWriter:
    """Buffers encoded rows and appends them to the store in chunks (each append is atomic)."""

    def __init__(self, store: Store, report: ExtractReport, report_path: Path | None, chunk: int):
        self.store, self.report, self.report_path, self.chunk = store, report, report_path, chunk
        self.parts: list[Rows] = []

    def add(self, rows: Rows) -> None:
        self.parts.append(rows)
        if sum(len(p) for p in self.parts) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        """Append the buffered rows, less any that a concurrent extract stored since planning
        (checked and appended under one hold of the writer lock, so each image lands once)."""
        if self.parts:
            rows = Rows.concat(self.parts)
            with Store.writing(self.store.path, self.store.lock_timeout):
                stored = self.store.refresh().existing_ids(rows.ids)
                self.store.append(rows.take(np.flatnonzero(~stored)))
            self.report.encoded += len(rows) - int(stored.sum())
            self.report.already_stored += int(stored.sum())
            self.parts = []
        if self.report_path is not None:
            self.report.save(self.report_path)


@dataclass
class EncodedBatch:
    """One model batch: positions (into the encoded item list) with their features and views,
    and the positions that failed to decode, with the error."""

    done: list[int]
    features: np.ndarray | None
    views: np.ndarray | None
    failed: list[tuple[int, str]]


def _encode(encoder: Encoder, batch: torch.Tensor, n_views: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (B, D) and views (B, V, D) or None; a key is the renormalised mean of views."""
    if not n_views:
        return encoder.encode_pixels(batch), None
    b, v = batch.shape[:2]
    views = encoder.encode_pixels(batch.flatten(0, 1)).reshape(b, v, -1)
    keys = views.mean(axis=1)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    return keys, views


def encode_items(encoder: Encoder, items: list[ImageItem], n_views: int,
                 opts: ExtractOptions) -> Iterator[EncodedBatch]:
    """Decode (in `opts.workers` processes), preprocess and encode `items`, batch by batch."""
    transform = view_pixels(encoder.preprocess_cfg) if n_views else eval_pixels(encoder.preprocess)
    per_batch = max(1, opts.batch_size // max(1, n_views))  # images per model batch
    loader = DataLoader(
        _ImageDataset(items, transform, n_views, opts.seed),
        batch_size=min(per_batch, max(1, WORKER_TENSORS // max(1, n_views))),
        num_workers=opts.workers,
        collate_fn=_collate,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if opts.workers else None,
    )
    pending: list[tuple[list[int], torch.Tensor]] = []
    failed: list[tuple[int, str]] = []

    def encoded() -> EncodedBatch:
        done = [i for part, _ in pending for i in part]
        feats, views = (_encode(encoder, torch.cat([x for _, x in pending]), n_views)
                        if pending else (None, None))
        batch = EncodedBatch(done, feats, views, list(failed))
        pending.clear()
        failed.clear()
        return batch

    for idx, batch, bad in loader:
        failed.extend(bad)
        if batch is not None:
            pending.append((idx, batch.to(encoder.device, non_blocking=True)))
        if sum(len(part) for part, _ in pending) >= per_batch:
            yield encoded()
    if pending or failed:
        yield encoded()


@dataclass
class ExtractJob:
    """One extract run, planned: the store, the images still to encode, class ids, the report."""

    store: Store
    todo: list[ImageItem]
    labels: dict[str, int]
    n_views: int
    options: ExtractOptions
    report: ExtractReport

    @classmethod
    def plan(cls, source: Source, store_path: Path, encoder: Encoder, opts: ExtractOptions,
             id_prefix: str = "") -> ExtractJob:
        """Open (or create) the store, add the source's classes and drop the ids already stored."""
        if opts.views < 0 or opts.workers < 0 or opts.batch_size < 1 or opts.chunk < 1:
            raise BadInput("bad extract options", "`views=` and `workers=` must be >= 0, "
                           "`batch_size=` and `chunk=` >= 1")
        items = [ImageItem(id_prefix + it.id, it.path, it.label) for it in source.items]
        store = open_or_create(store_path, encoder, source.classes)
        labels = _label_ids(store, source)
        todo = _pending(store, items, opts.split)
        report = ExtractReport(str(source.root), opts.split, len(items), len(items) - len(todo))
        n_views = opts.views if opts.split == VIEW_SPLIT and source.labelled else 0
        log.info("%d images, %d already stored, %d to encode (%s, %d views)",
                 len(items), report.already_stored, len(todo), opts.split, n_views)
        return cls(store, todo, labels, n_views, opts, report)

    def writer(self, report_path: Path | str | None, chunk: int) -> ChunkWriter:
        """A writer appending this job's rows every `chunk` rows and saving its report."""
        path = None if report_path is None else Path(report_path)
        return ChunkWriter(self.store, self.report, path, chunk)

    def take(self, items: list[ImageItem], batch: EncodedBatch, writer: ChunkWriter) -> None:
        """Report the batch's bad files and queue its rows; positions index into `items`."""
        for i, err in batch.failed:
            self.report.bad.append(BadFile(items[i].id, str(items[i].path), err))
            log.warning("skipping %s: %s", items[i].path, err)
        if batch.done:
            writer.add(Rows.make(
                ids=[items[i].id for i in batch.done], features=batch.features,
                labels=[self.labels.get(items[i].label, -1) for i in batch.done],
                splits=self.options.split, sources=[str(items[i].path) for i in batch.done],
                views=batch.views,
            ))


def extract(
    source: Source,
    store_path: Path | str,
    encoder: Encoder,
    options: ExtractOptions | None = None,
    report_path: Path | str | None = None,
    id_prefix: str = "",
) -> ExtractReport:
    """Encode every image of `source` not yet in the store; bad files go to the report."""
    opts = options or ExtractOptions()
    job = ExtractJob.plan(source, Path(store_path), encoder, opts, id_prefix)
    writer = job.writer(report_path, opts.chunk)
    with progress(len(job.todo), "extract", unit="img", disable=not opts.progress) as bar:
        for batch in encode_items(encoder, job.todo, job.n_views, opts):
            job.take(job.todo, batch, writer)
            bar.update(len(batch.done) + len(batch.failed))
    writer.flush()
    return job.report
