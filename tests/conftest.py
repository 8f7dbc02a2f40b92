"""Shared test set-up: no network, no hub retries."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ray.init() without an address joins any Ray already running on this machine (another test
# run's, or a test cluster); "local" always starts a private one.
os.environ.setdefault("RAY_ADDRESS", "local")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests: "ci" (default) stays fast; HYPOTHESIS_PROFILE=nightly tries many more cases.
_SLOW_OK = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=50, **_SLOW_OK)
settings.register_profile("nightly", max_examples=2000, **_SLOW_OK)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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


@pytest.fixture(scope="session")
def image_folder():
    """A factory `make(root, per_class=3)`: class folders "cat" and "dog_breed" of small random
    images (img0.png, img1.jpg, ...) plus cat/broken.jpg (truncated JPEG) and
    dog_breed/notes.txt (not an image); returns root."""
    import numpy as np
    from PIL import Image

    def make(root: Path, per_class: int = 3, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        for c in ("cat", "dog_breed"):
            (root / c).mkdir(parents=True)
            for i in range(per_class):
                w, h = rng.integers(30, 60, size=2)
                pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / c / f"img{i}.{'jpg' if i % 2 else 'png'}")
        whole = (root / "cat" / "img1.jpg").read_bytes()
        (root / "cat" / "broken.jpg").write_bytes(whole[: len(whole) // 2])
        (root / "dog_breed" / "notes.txt").write_text("not an image")
        return root

    return make
