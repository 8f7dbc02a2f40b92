"""Image decoding, CLIP's eval transform and Tip-Adapter's augmented training views.

Workers produce uint8 pixels (a quarter of float32's bytes through shared memory and PCIe);
`Encoder.encode_pixels` converts and normalises them on the device, with the same arithmetic
as ToTensor + Normalize. Views are seeded per image from (seed, image id), so they do not depend
on worker count or order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

if TYPE_CHECKING:
    from torchvision.transforms import Compose

VIEW_SCALE = (0.5, 1.0)
VIEW_FLIP_P = 0.5


def decode_image(path) -> Image.Image:
    """Fully decode an image file to RGB (truncated or non-image files raise here)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def _size(pp_cfg: dict[str, Any]) -> tuple[int, int]:
    size = pp_cfg["size"]
    return (size, size) if isinstance(size, int) else tuple(size)


def eval_pixels(preprocess: Compose) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's eval transform up to (not including) ToTensor + Normalize, giving uint8."""
    # start-up time: torchvision takes over a second to import; only encoding images needs it
    from torchvision import transforms as T

    steps = list(preprocess.transforms)
    names = [type(t).__name__ for t in steps]
    cut = next(i for i, n in enumerate(names) if n in ("ToTensor", "MaybeToTensor"))
    if names[cut + 1:] != ["Normalize"]:
        raise ValueError(f"unexpected eval transform tail {names[cut:]}")
    return T.Compose([*steps[:cut], T.PILToTensor()])


def view_pixels(pp_cfg: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """Tip-Adapter's cache augmentation (random resized crop, bicubic; hflip) as uint8 pixels.

    With CLIP normalisation (done on the device) this is Tip-Adapter's training transform.
    """
    # start-up time: torchvision takes over a second to import; only encoding images needs it
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(_size(pp_cfg), scale=VIEW_SCALE,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=VIEW_FLIP_P),
        T.PILToTensor(),
    ])


def image_seed(seed: int, image_id: str) -> int:
    """A 63-bit seed derived from the run seed and the image id."""
    digest = hashlib.blake2b(f"{seed}\0{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_views(img: Image.Image, transform: Callable, n_views: int, seed: int) -> torch.Tensor:
    """`n_views` augmented views (V, 3, H, W), reproducible for a given seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(img) for _ in range(n_views)])
