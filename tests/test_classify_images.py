"""`classify --images`: images are encoded with the cache's encoder, then classified."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from test_classify import assert_same

from tipretrieval.cache.cache import Cache
from tipretrieval.cli import main
from tipretrieval.encode import load_encoder, scan_source
from tipretrieval.encode.extract import ExtractOptions, extract
from tipretrieval.jobs.classify import QUERY_STORE, classify_store, read_output
from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store.store import Store


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def test_images_equal_the_extracted_store(tiny_clip_config, tiny_checkpoint, image_folder,
                                          tmp_path):
    folder = image_folder(tmp_path / "imgs")
    encoder = load_encoder(str(tiny_clip_config), checkpoint=tiny_checkpoint, device="cpu")
    extract(scan_source(folder, unlabelled=True), tmp_path / "ref", encoder,
            ExtractOptions(split="query", views=0, workers=0, progress=False))
    rng = np.random.default_rng(0)
    shots = Rows.make([f"k{i}" for i in range(6)], _unit(rng.standard_normal((6, 32))),
                      [0, 0, 0, 1, 1, 1], row_ids=np.arange(6))
    Cache.from_rows(shots, ["cat", "dog_breed"], Store.open(tmp_path / "ref").provenance,
                    text=_unit(rng.standard_normal((2, 32)))).save(tmp_path / "cache")

    out = tmp_path / "out"
    res = CliRunner().invoke(main, [
        "classify", str(tmp_path / "cache"), "--images", str(folder), "--out", str(out),
        "--model", str(tiny_clip_config), "--checkpoint", str(tiny_checkpoint),
        "--device", "cpu", "--top-k", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "6 rows classified" in res.output  # the two broken files are skipped
    classify_store(tmp_path / "cache", tmp_path / "ref", tmp_path / "expected",
                   show_progress=False)
    assert_same(read_output(out), read_output(tmp_path / "expected"))
    assert len(Store.open(out / QUERY_STORE)) == 6


def test_images_take_pretrained_and_refuse_in_one_line(image_folder, tmp_path):
    folder = image_folder(tmp_path / "imgs")
    rng = np.random.default_rng(1)
    shots = Rows.make(["k0", "k1"], _unit(rng.standard_normal((2, 512))), [0, 1],
                      row_ids=np.arange(2))
    prov = Provenance("ViT-B-32", "openai", 512)
    Cache.from_rows(shots, ["cat", "dog_breed"], prov,
                    text=_unit(rng.standard_normal((2, 512)))).save(tmp_path / "cache")
    res = CliRunner().invoke(main, [
        "classify", str(tmp_path / "cache"), "--images", str(folder), "--out",
        str(tmp_path / "out"), "--pretrained", "nope", "--quiet"])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "unknown pretrained tag 'nope' for ViT-B-32" in errors[0]
    assert errors[0].endswith("pick a known tag or pass --checkpoint FILE")
    assert not (tmp_path / "out" / QUERY_STORE).exists()
