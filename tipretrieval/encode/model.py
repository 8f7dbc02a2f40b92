"""open_clip model loading: by name + pretrained tag (cached, or downloaded online) or checkpoint.

The returned `Encoder` carries everything needed to turn images and prompts into L2-normalised
float32 features, plus the `Provenance` a store records for them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadInput
from ..provenance import Provenance
from ..util.checksum import file_sha256
from .weights import resolve_tag

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"


@dataclass
class Encoder:
    """An open_clip model ready for inference, with its eval transform and provenance."""

    model: torch.nn.Module
    preprocess: Callable
    preprocess_cfg: dict[str, Any]
    tokenizer: Callable
    device: torch.device
    provenance: Provenance
    amp_dtype: torch.dtype | None = None

    @property
    def dim(self) -> int:
        return self.provenance.dim

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> np.ndarray:
        """L2-normalised float32 features (N, D) of preprocessed images (N, 3, H, W)."""
        images = images.to(self.device, non_blocking=True)
        with self._autocast():
            feats = self.model.encode_image(images)
        return _normalised(feats)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Features of uint8 pixels (N, 3, H, W): /255 and CLIP-normalised on the device."""
        x = pixels.to(self.device, non_blocking=True).float().div_(255)
        mean = torch.tensor(self.preprocess_cfg["mean"], device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocess_cfg["std"], device=self.device).view(1, -1, 1, 1)
        return self.encode_images(x.sub_(mean).div_(std))

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 features (N, D) of prompts."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            feats = self.model.encode_text(tokens)
        return _normalised(feats)


def _normalised(feats: torch.Tensor) -> np.ndarray:
    feats = feats.float()
    return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BadInput(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {device} requested but CUDA is not available",
                       "use `device=` cpu")
    return dev


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it, else fp16 on GPU; none (fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def register_model_name(model: str) -> str:
    """Accept a built-in open_clip name or the path of a model-config JSON (registered by stem)."""
    import open_clip  # start-up time: open_clip takes seconds to import

    path = Path(model)
    if path.suffix == ".json":
        if not path.is_file():
            raise BadInput(f"model config {model} does not exist: give an existing JSON file")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise BadInput(
            f"unknown open_clip model {model!r}: pick one of `open_clip.list_models()` "
            "or give a model-config .json file"
        )
    return model


def load_encoder(
    model: str,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
) -> Encoder:
    """Load an open_clip model by name with a pretrained tag, a checkpoint file, or random weights.

    `checkpoint` may be a plain state_dict, a {'state_dict': ...} wrapper or a .safetensors file.
    Neither `pretrained` nor `checkpoint` gives random weights (tests and benchmarks only).
    """
    import open_clip  # start-up time: open_clip takes seconds to import
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    if pretrained and checkpoint:
        raise BadInput("give either a pretrained tag or a checkpoint file, not both")
    name = register_model_name(model)
    dev = pick_device(device)
    force_pp: dict[str, Any] = {}
    weights_path: str | None = None
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise BadInput(f"checkpoint {ckpt} does not exist: give the path of a weights file")
        weights, weights_path = f"sha256:{file_sha256(ckpt)}", str(ckpt)
    elif pretrained:
        resolved = resolve_tag(name, pretrained)
        weights, weights_path, force_pp = pretrained, str(resolved.path), resolved.preprocess
    else:
        weights = RANDOM_WEIGHTS
        log.warning("no pretrained tag or checkpoint: %s has random weights", name)
    try:
        clip = open_clip.create_model(name, pretrained=weights_path, device="cpu",
                                      force_preprocess_cfg=force_pp)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise BadInput(f"weights {weights_path} do not fit model {name}: "
                       f"{str(exc).splitlines()[0]}", "check `model=` matches the checkpoint"
                       ) from exc
    dim = _embed_dim(clip)
    clip = clip.to(dev).eval()
    pp_cfg = merge_preprocess_dict(clip.visual.preprocess_cfg, {})
    return Encoder(
        model=clip,
        preprocess=image_transform_v2(PreprocessCfg(**pp_cfg), is_train=False),
        preprocess_cfg=pp_cfg,
        tokenizer=open_clip.get_tokenizer(name),
        device=dev,
        provenance=Provenance(
            encoder=name, weights=weights, dim=dim, preprocess=_describe(pp_cfg)
        ),
        amp_dtype=amp_dtype_for(dev),
    )


def _embed_dim(clip: torch.nn.Module) -> int:
    out = getattr(clip.visual, "output_dim", None)
    if out is None:
        with torch.inference_mode():
            size = clip.visual.preprocess_cfg["size"]
            h, w = (size, size) if isinstance(size, int) else size
            out = clip.encode_image(torch.zeros(1, 3, h, w)).shape[-1]
    return int(out)


def _describe(pp_cfg: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a store records: eval transform and the augmented-view recipe."""
    size = pp_cfg["size"]
    return {
        "image_size": list(size) if isinstance(size, (tuple, list)) else int(size),
        "mean": [float(m) for m in pp_cfg["mean"]],
        "std": [float(s) for s in pp_cfg["std"]],
        "interpolation": pp_cfg["interpolation"],
        "resize_mode": pp_cfg["resize_mode"],
        "eval": "resize shortest side + center crop",
        "views": "RandomResizedCrop(scale=(0.5, 1), bicubic) + hflip(p=0.5); key = mean of views",
    }
