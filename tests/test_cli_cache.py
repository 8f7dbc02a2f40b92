"""CLI: build, tune, finetune, eval, add-shots, remove-shots; exit codes and one-line errors."""

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tipretrieval.cache.cache import Cache
from tipretrieval.cli import main
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.encode.text import TextClassifier
from tipretrieval.jobs.evaluate import evaluate
from tipretrieval.method.tune import search
from tipretrieval.provenance import Provenance
from tipretrieval.store.store import Store

TINY_CLIP_CONFIG = Path(__file__).parent / "assets" / "tiny_clip.json"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_dataset(8, 48, seed=11)
    store = write_store(root / "store", data, SplitSizes(train=6, val=5, test=6, query=1,
                                                         views=2))
    TextClassifier(data.text, data.classes, "synthetic", store.provenance).save(root / "t.npz")
    return root, store


def run(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    return result


def build(root, out, *extra):
    run("build", "--store", root / "store", "--shots", 3, "--text", root / "t.npz", "--out",
        root / out, *extra)
    return root / out


def test_build_tune_eval(env):
    root, store = env
    cache_dir = build(root, "c1")
    out = run("tune", cache_dir, "--store", root / "store", "--steps", 20, 10).stdout
    cache = Cache.load(cache_dir)
    val = cache.rows_of(store, "val")
    expected = search(val.features, val.labels, cache.keys, cache.labels, cache.text,
                      steps=(20, 10), show_progress=False)
    assert (cache.alpha, cache.beta, cache.generation) == (expected.alpha, expected.beta, 2)
    grid = json.loads((cache_dir / "tune-grid.json").read_text())
    assert np.allclose(grid["grid"], expected.grid) and str(cache_dir / "tune-grid.json") in out
    assert (cache_dir / "tune-heatmap.png").read_bytes()[:4] == b"\x89PNG"
    table = run("eval", cache_dir, "--store", root / "store").stdout
    assert "not fine-tuned" in table
    as_json = json.loads(run("eval", cache_dir, "--store", root / "store", "--json").stdout)
    report = evaluate(cache, store)
    assert as_json["scores"] == [vars(s) for s in report.scores]
    assert f"{report.scores[2].top1:.2f}" in table


def test_finetune_then_eval(env):
    root, _ = env
    cache_dir = build(root, "c2")
    out = run("finetune", cache_dir, "--store", root / "store", "--epochs", 2).stdout
    assert "best epoch" in out and Cache.load(cache_dir).method == "tip-f"
    scores = json.loads(run("eval", cache_dir, "--store", root / "store", "--json").stdout)
    assert all(s["top1"] is not None for s in scores["scores"])


def test_add_and_remove_shots(env):
    root, store = env
    cache_dir = build(root, "c3")
    cache = Cache.load(cache_dir)
    train = store.labelled("train")
    spare = train.ids[~np.isin(train.row_ids, cache.row_ids)][:3].tolist()
    run("add-shots", cache_dir, "--ids", ",".join(spare[:2]), "--ids", spare[2])
    added = Cache.load(cache_dir)
    assert len(added) == len(cache) + 3 and added.generation == 2
    run("remove-shots", cache_dir, "--ids", spare[0])
    removed = Cache.load(cache_dir)
    assert len(removed) == len(cache) + 2 and removed.generation == 3
    run("add-shots", cache_dir)  # every remaining labelled train row
    assert len(Cache.load(cache_dir)) == len(train)


@pytest.mark.parametrize("args, message", [
    (("eval", "{root}/nope", "--store", "{root}/store"), "is not a cache"),
    (("build", "{root}/store", "--shots", "0", "--text", "{root}/t.npz", "--out", "{root}/x"),
     "not a positive number"),
    (("build", "{root}/store", "--shots", "many", "--out", "{root}/x"), "not a positive number"),
    (("build", "{root}/store", "--shots", "2", "--split", "query", "--text", "{root}/t.npz",
      "--out", "{root}/x"), "no labelled rows"),
    (("build", "{root}/store", "--shots", "2", "--text", "{root}/t.npz", "--out", "{root}/c1"),
     "already holds a cache"),
    (("tune", "{root}/c1", "--val", "{root}/other"), "encoder"),
    (("eval", "{root}/c1", "--store", "{root}/other"), "encoder"),
    (("eval", "{root}/c1", "--store", "{root}/store", "--methods", "magic"), "unknown method"),
    (("add-shots", "{root}/c1", "--ids", "no-such-id"), "not labelled 'train' rows"),
    (("add-shots", "{root}/c1", "--store", "{root}/other"), "not the store"),
    (("remove-shots", "{root}/c1"), "nothing to remove"),
    (("remove-shots", "{root}/c1", "--row-ids", "999999"), "not keys of this cache"),
    (("add-shots", "{root}/c1", "--val", "{root}/store"),
     "--val/--val-split only apply with --retune: add --retune"),
    (("build", "{root}/store", "--store", "{root}/other", "--shots", "2", "--out", "{root}/x"),
     "two stores given"),
    (("finetune", "{root}/c1", "--train", "{root}/store", "--val", "{root}/other"), "encoder"),
])
def test_bad_input_exits_2_with_one_line(env, args, message):
    root, _ = env
    if not (root / "c1").exists():
        build(root, "c1")
    if not (root / "other").exists():
        Store.create(root / "other", dim=48, provenance=Provenance("ViT-B-32", "openai", 48),
                     classes=["a"])
    before = (root / "c1" / "cache.json").read_text()
    result = run(*(a.format(root=root) for a in args), code=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert (root / "c1" / "cache.json").read_text() == before


def test_old_names_and_overwrite(env):
    root, _ = env
    cache_dir = build(root, "c4")
    run("build", root / "store", "--shots", 2, "--text", root / "t.npz", "--out", cache_dir,
        "--overwrite")
    run("build", root / "store", "--shots", 2, "--text", root / "t.npz", "--out", cache_dir,
        "--force")
    run("tune", cache_dir, "--val", root / "store", "--steps", 4, 4)
    run("finetune", cache_dir, "--train", root / "store", "--val", root / "store",
        "--epochs", 1)
    cache = Cache.load(cache_dir)
    assert cache.generation == 5 and len(cache) == 16 and cache.method == "tip-f"


def test_new_class_from_images_end_to_end(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "otters").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / "otters" / f"o{i}.png")
    model = ("--model", TINY_CLIP_CONFIG, "--checkpoint", tiny_checkpoint)
    run("extract", tmp_path / "train", "--store", tmp_path / "s", "--views", 2, "--workers", 0,
        *model)
    run("build", tmp_path / "s", "--shots", 2, "--templates", "tip_imagenet", "--out",
        tmp_path / "c", *model)
    err = run("add-shots", tmp_path / "c", "--images", tmp_path / "otters", "--label", "otter",
              "--views", 2, code=2).stderr
    assert "--checkpoint" in err  # the checkpoint's weights cannot be loaded by name
    out = run("add-shots", tmp_path / "c", "--images", tmp_path / "otters", "--label", "otter",
              "--views", 2, *model).stdout
    assert "1 new classes" in out
    cache = Cache.load(tmp_path / "c")
    assert cache.classes == ["cat", "dog", "otter"] and cache.class_counts().tolist() == [2, 2, 2]
    assert Store.open(tmp_path / "s").classes == ["cat", "dog", "otter"]
    assert cache.text.shape == (3, 32)
    assert np.allclose(np.linalg.norm(cache.text, axis=1), 1, atol=1e-5)


def test_build_keeps_index_search_parameters(env):
    root, _ = env
    build(root, "ivf", "--index", "IVF4,Flat", "--index-params", "nprobe=3")
    index = Cache.load(root / "ivf").index
    assert faiss.extract_index_ivf(index._cpu.index).nprobe == 3
    res = run("build", root / "store", "--shots", 3, "--text", root / "t.npz", "--out",
              root / "bad", "--index", "IVF4,Flat", "--index-params", "bogus=1", code=2)
    assert "nprobe" in res.output and not (root / "bad").exists()
