"""Shared test set-up: no network, no hub retries."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_CLIP_CONFIG = Path(__file__).parent / "assets" / "tiny_clip.json"


@pytest.fixture(scope="session")
def tiny_clip_config() -> Path:
    """Path of the tiny open_clip model config (pass it as the model name)."""
    return TINY_CLIP_CONFIG


@pytest.fixture(scope="session")
def tiny_encoder():
    """A tiny open_clip model (tests/assets/tiny_clip.json, dim 32, 32 px) with seeded random
    weights on CPU; registered with open_clip as "tiny_clip"."""
    import torch

    from tipretrieval.encode import load_encoder

    torch.manual_seed(0)
    return load_encoder(str(TINY_CLIP_CONFIG), device="cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_encoder, tmp_path_factory) -> Path:
    """The tiny encoder's weights saved as a plain state_dict (for --checkpoint)."""
    import torch

    path = tmp_path_factory.mktemp("tiny_ckpt") / "tiny_clip.pt"
    torch.save(tiny_encoder.model.state_dict(), path)
    return path
