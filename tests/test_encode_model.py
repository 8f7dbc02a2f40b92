"""Model loading: checkpoint formats, provenance, the offline pretrained-tag error."""

import hashlib
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from tipretrieval.cli import main
from tipretrieval.encode import load_encoder
from tipretrieval.encode import weights as weights_mod
from tipretrieval.errors import BadInput


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _save(fmt, state, path):
    if fmt == "plain":
        torch.save(state, path)
    elif fmt == "wrapped":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.mark.parametrize("fmt,suffix", [("plain", ".pt"), ("wrapped", ".pt"),
                                        ("safetensors", ".safetensors")])
def test_checkpoint_roundtrip_gives_identical_features(tiny_encoder, tiny_clip_config, images,
                                                       tmp_path, fmt, suffix):
    path = tmp_path / f"ckpt{suffix}"
    _save(fmt, tiny_encoder.model.state_dict(), path)
    loaded = load_encoder(str(tiny_clip_config), checkpoint=path, device="cpu")
    assert (loaded.encode_images(images) == tiny_encoder.encode_images(images)).all()
    assert (loaded.encode_text(["a photo of a cat."])
            == tiny_encoder.encode_text(["a photo of a cat."])).all()
    prov = loaded.provenance
    assert prov.weights == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert (prov.encoder, prov.dim) == ("tiny_clip", 32)
    assert prov.preprocess["image_size"] == [32, 32]
    assert prov.preprocess["interpolation"] == "bicubic"
    assert prov.preprocess["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_encoded_features_are_unit_norm_float32(tiny_encoder, images):
    feats = tiny_encoder.encode_images(images)
    assert feats.dtype == "float32" and feats.shape == (5, 32)
    ref = tiny_encoder.model.encode_image(images)
    ref = (ref / ref.norm(dim=-1, keepdim=True)).detach().numpy()
    assert abs(feats - ref).max() < 1e-5


def test_checkpoint_of_another_model_is_bad_input(tiny_clip_config, tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(BadInput, match="do not fit model tiny_clip"):
        load_encoder(str(tiny_clip_config), checkpoint=path, device="cpu")


def test_unknown_model_and_tag_are_bad_input():
    with pytest.raises(BadInput, match="unknown open_clip model"):
        load_encoder("NoSuchModel-9", pretrained="openai")
    with pytest.raises(BadInput, match="unknown pretrained tag 'nope' for ViT-B-32"):
        load_encoder("ViT-B-32", pretrained="nope")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(weights_mod, "URL_CACHE", tmp_path / "clip")
    return cache


def test_offline_tag_fails_fast_with_one_actionable_line(empty_cache):
    start = time.monotonic()
    with pytest.raises(BadInput) as info:
        load_encoder("ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu")
    assert time.monotonic() - start < 2.0
    msg = str(info.value)
    assert "\n" not in msg
    for part in ("ViT-B-32/laion2b_s34b_b79k", str(empty_cache), "HF_HUB_OFFLINE"):
        assert part in info.value.problem
    assert "`checkpoint=` FILE" in info.value.hint and msg.endswith(info.value.hint)


def test_offline_tag_cli_exits_2(empty_cache, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"x")
    result = CliRunner().invoke(main, [
        "extract", str(tmp_path / "imgs"), "--store", str(tmp_path / "store"),
        "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k",
    ])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: pretrained weights ViT-B-32/laion2b")
    assert str(empty_cache) in lines[0] and "--checkpoint" in lines[0]
    assert not (tmp_path / "store").exists()


def test_cached_tag_is_found_without_network(empty_cache, monkeypatch):
    repo = empty_cache / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    blob = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"weights")
    monkeypatch.setattr(weights_mod, "reachable", lambda host: pytest.fail("network probed"))
    resolved = weights_mod.resolve_tag("ViT-B-32", "laion2b_s34b_b79k")
    assert resolved.path == blob
    assert resolved.preprocess["interpolation"] == "bicubic"


def test_uint8_pixel_path_equals_open_clip_preprocess(tiny_encoder):
    from PIL import Image

    from tipretrieval.encode.transforms import eval_pixels

    rng = np.random.default_rng(3)
    imgs = [Image.fromarray(rng.integers(0, 255, (41, 57, 3), dtype=np.uint8)) for _ in range(3)]
    pixels = torch.stack([eval_pixels(tiny_encoder.preprocess)(im) for im in imgs])
    floats = torch.stack([tiny_encoder.preprocess(im) for im in imgs])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 32, 32)
    assert np.abs(tiny_encoder.encode_pixels(pixels) - tiny_encoder.encode_images(floats)).max() \
        < 1e-6


def test_encoder_for_one_rule_for_every_provenance(tiny_clip_config, tiny_checkpoint):
    from tipretrieval.encode.resolve import encoder_for, spec_for
    from tipretrieval.provenance import Provenance

    made = load_encoder(str(tiny_clip_config), checkpoint=tiny_checkpoint, device="cpu")
    prov = made.provenance
    assert spec_for(Provenance("ViT-B-32", "openai", 512)) == \
        spec_for(None, model="ViT-B-32", pretrained="openai")
    assert spec_for(prov, checkpoint=tiny_checkpoint).model == "tiny_clip"  # name from features
    for weights, encoder in ((prov.weights, "tiny_clip"), ("random", "tiny_clip"),
                             ("seed:0", "synthetic"), ("unknown", "external")):
        with pytest.raises(BadInput, match="cannot be loaded by name: pass `checkpoint=` FILE"):
            encoder_for(Provenance(encoder, weights, 32))
    with pytest.raises(BadInput, match="no encoder given"):
        encoder_for(None, pretrained="openai")
    again = encoder_for(prov, model=str(tiny_clip_config), checkpoint=tiny_checkpoint,
                        device="cpu")
    assert again.provenance == prov
    other = Provenance("tiny_clip", "sha256:" + "0" * 64, 32, preprocess=prov.preprocess)
    with pytest.raises(BadInput, match="encoder"):
        encoder_for(other, model=str(tiny_clip_config), checkpoint=tiny_checkpoint,
                    device="cpu")
