"""Benchmark `extract` against plain open_clip loops on the same generated JPEGs, in one run.

Rows: a plain loop one image at a time (PIL + preprocess + model), the same loop batched, and
`extract` (DataLoader workers, uint8 pixels, store appends). With CUDA also the model's pure
forward on preloaded tensors, the ceiling `extract` should reach (target >= 0.9x).

    python tools/bench_extract.py [--images 256] [--device auto] [--model ViT-B-32]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tipretrieval.encode.extract import ExtractOptions, default_workers, extract
from tipretrieval.encode.model import Encoder, load_encoder
from tipretrieval.encode.sources import scan_source


def make_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """`n` smooth random JPEGs of about `size` px (photo-like file sizes, not noise)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        w, h = int(size * rng.uniform(0.8, 1.25)), size
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"{i:05d}.jpg",
                                                                   quality=90)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_single(enc: Encoder, paths: list[Path]) -> float:
    """Seconds to encode `paths` one at a time: PIL + preprocess + forward."""
    start = time.perf_counter()
    for p in paths:
        enc.encode_images(enc.preprocess(Image.open(p).convert("RGB"))[None])
    _sync(enc.device)
    return time.perf_counter() - start


def plain_batched(enc: Encoder, paths: list[Path], batch: int) -> float:
    """Seconds to encode `paths` decoding in the main process and running batches."""
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        x = torch.stack([enc.preprocess(Image.open(p).convert("RGB"))
                         for p in paths[i:i + batch]])
        enc.encode_images(x)
    _sync(enc.device)
    return time.perf_counter() - start


def run_extract(enc: Encoder, folder: Path, store: Path, batch: int, workers: int) -> float:
    """Seconds for `extract` of the folder into a new store (query split, eval transform)."""
    opts = ExtractOptions(split="query", views=0, batch_size=batch, workers=workers,
                          progress=False)
    start = time.perf_counter()
    report = extract(scan_source(folder), store, enc, opts)
    elapsed = time.perf_counter() - start
    assert report.encoded == len(list(folder.iterdir())), report
    return elapsed


def pure_forward(enc: Encoder, n: int, batch: int) -> float:
    """Seconds for the model alone on `n` images preloaded on the device."""
    size = enc.preprocess_cfg["size"]
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(batch, 3, h, w, device=enc.device)
    enc.encode_images(x)
    _sync(enc.device)
    start = time.perf_counter()
    for _ in range(0, n, batch):
        enc.encode_images(x)
    _sync(enc.device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="JPEGs to generate")
    ap.add_argument("--single", type=int, default=64, help="images for the one-at-a-time loop")
    ap.add_argument("--size", type=int, default=256, help="JPEG height in px")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=default_workers())
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    enc = load_encoder(args.model, device=args.device)  # random weights: speed only
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        folder.mkdir()
        make_jpegs(folder, args.images, args.size)
        paths = sorted(folder.iterdir())
        plain_batched(enc, paths[: args.batch_size // 4], args.batch_size // 4)  # warm-up
        rows = [
            ("plain loop, 1 image at a time", args.single, plain_single(enc, paths[: args.single])),
            (f"plain loop, batches of {args.batch_size}", len(paths),
             plain_batched(enc, paths, args.batch_size)),
            (f"extract ({args.workers} workers)", len(paths),
             run_extract(enc, folder, Path(tmp) / "store", args.batch_size, args.workers)),
        ]
        if enc.device.type == "cuda":
            n = max(len(paths), 20 * args.batch_size)
            rows.append(("pure forward, preloaded tensors", n,
                         pure_forward(enc, n, args.batch_size)))

    rates = {name: n / sec for name, n, sec in rows}
    ext = rates[rows[2][0]]
    print(f"device {enc.device}, model {args.model} (random weights), {args.images} JPEGs "
          f"~{args.size}px, amp {enc.amp_dtype}, torch threads {torch.get_num_threads()}")
    print(f"| {'method':<36} | {'images':>6} | {'seconds':>8} | {'img/s':>8} | "
          f"{'extract / this':>14} |")
    print(f"|{'-' * 38}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 16}|")
    for name, n, sec in rows:
        print(f"| {name:<36} | {n:>6} | {sec:>8.2f} | {rates[name]:>8.1f} | "
              f"{ext / rates[name]:>13.2f}x |")


if __name__ == "__main__":
    main()
