"""Prompt templates and the text classifier against an independent computation."""

import numpy as np
import pytest
import torch

from tipretrieval.encode import load_templates, text_classifier
from tipretrieval.encode.text import TextClassifier, build_text_classifier, template_names
from tipretrieval.errors import BadInput
from tipretrieval.provenance import Provenance


def test_shipped_template_sets():
    clip80 = load_templates("clip_imagenet")
    tip7 = load_templates("tip_imagenet")
    assert len(clip80) == len(set(clip80)) == 80
    assert len(tip7) == 7 and set(tip7) <= set(clip80)
    assert load_templates("oxford_pets") == ["a photo of a {}, a type of pet."]
    assert load_templates("dtd") == ["{} texture."]
    assert load_templates("eurosat") == ["a centered satellite photo of {}."]
    assert {"caltech101", "food101", "ucf101", "imagenet"} <= set(template_names())


def test_user_template_files(tmp_path):
    txt = tmp_path / "mine.txt"
    txt.write_text("a photo of {}.\n\nthe {}, up close.\n")
    assert load_templates(txt) == ["a photo of {}.", "the {}, up close."]
    js = tmp_path / "mine.json"
    js.write_text('["{} in the wild."]')
    assert load_templates(str(js)) == ["{} in the wild."]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a cat.\n")
    with pytest.raises(BadInput, match="exactly one"):
        load_templates(bad)
    with pytest.raises(BadInput, match="unknown template set 'nope'"):
        load_templates("nope")


def _independent(encoder, names, templates):
    rows = []
    with torch.no_grad():
        for name in names:
            tokens = encoder.tokenizer([t.format(name) for t in templates])
            emb = encoder.model.encode_text(tokens)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


def test_text_classifier_matches_independent_computation(tiny_encoder):
    templates = load_templates("tip_imagenet")
    weights = text_classifier(tiny_encoder, ["golden_retriever", "tabby cat"], templates,
                              batch_size=5)
    assert weights.shape == (2, 32) and weights.dtype == np.float32
    assert np.allclose(np.linalg.norm(weights, axis=1), 1.0, atol=1e-6)
    expected = _independent(tiny_encoder, ["golden retriever", "tabby cat"], templates)
    assert np.abs(weights - expected).max() < 1e-5


def test_saved_classifier_roundtrip_and_encoder_check(tiny_encoder, tmp_path):
    clf = build_text_classifier(tiny_encoder, ["a", "b", "c"], "dtd")
    path = tmp_path / "text.npz"
    clf.save(path)
    loaded = TextClassifier.load(path, expect=tiny_encoder.provenance)
    assert (loaded.weights == clf.weights).all()
    assert loaded.classes == ["a", "b", "c"] and loaded.templates == "dtd"
    assert loaded.provenance == tiny_encoder.provenance
    other = Provenance("ViT-B-32", "openai", 512)
    with pytest.raises(BadInput, match="text classifier"):
        TextClassifier.load(path, expect=other)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInput, match="not a text classifier"):
        TextClassifier.load(tmp_path / "junk.npz")
