"""`tipretrieval fit-predict` on folders of small generated images with the tiny random
open_clip model: the stages, the files they leave, reruns that pick up new images, the labelling
loop, and the report opened in headless Chromium."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from report_helpers import CHROMIUM, Elements, chromium, read_page

from tipretrieval.cache.cache import Cache
from tipretrieval.cli import main
from tipretrieval.jobs.classify import Journal, read_output
from tipretrieval.jobs.fit_predict.holdout import val_quota
from tipretrieval.jobs.report.html import class_file
from tipretrieval.store.store import Store

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
IMAGES = {"red": 7, "green": 5, "blue": 3}  # 1, 1 and 0 held out for validation


def _image(path: Path, colour, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-40, 40, (40, 40, 3))
    Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(path)


def _folders(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for name, n in IMAGES.items():
        for i in range(n):
            _image(root / "labelled" / name / f"{name}{i}.png", COLOURS[name], rng)
        for i in range(2):
            _image(root / "new" / f"{name}_new{i}.jpg", COLOURS[name], rng)
    return root / "labelled", root / "new"


@pytest.fixture(scope="module")
def model_args(tiny_clip_config, tiny_checkpoint):
    return ["--model", str(tiny_clip_config), "--checkpoint", str(tiny_checkpoint),
            "--device", "cpu", "--views", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, model_args):
    root = tmp_path_factory.mktemp("fitpredict")
    _folders(root)
    here = os.getcwd()
    os.chdir(root)  # relative folders: the report still links the images by absolute path
    try:
        res = CliRunner().invoke(main, ["fit-predict", "labelled", "new", "--out", "run",
                                        *model_args])
    finally:
        os.chdir(here)
    assert res.exit_code == 0, res.output
    return root, root / "run", res.output


def _run(root: Path, model_args) -> str:
    res = CliRunner().invoke(main, ["fit-predict", str(root / "labelled"), str(root / "new"),
                                    "--out", str(root / "run"), *model_args])
    assert res.exit_code == 0, res.output
    return res.output


def test_stages_and_files(first_run):
    root, out, text = first_run
    store = Store.open(out / "store")
    val = store.select(split="val", columns=("features", "ids", "labels"))
    assert sorted(store.classes) == sorted(IMAGES)
    held = {name: int((val.labels == store.classes.index(name)).sum()) for name in IMAGES}
    assert held == {name: val_quota(n) for name, n in IMAGES.items()} == \
        {"red": 1, "green": 1, "blue": 0}
    assert "2 held out for validation (1 in 5 images" in text
    cache = Cache.load(out / "cache")
    train = store.labelled("train")
    assert sorted(cache.row_ids.tolist()) == sorted(train.row_ids.tolist())  # --shots all
    assert cache.info.templates == "tip_imagenet" and cache.text.shape == (3, 32)
    assert cache.info.history[-1]["job"] == "tune" and cache.info.history[-1]["n_val"] == 2
    results = read_output(out / "predictions")
    assert sorted(results.ids.tolist()) == sorted(p.name for p in (root / "new").iterdir())
    for path in ("store", "new-store"):  # given relative, recorded absolute: reports link them
        sources = Store.open(out / path).select(columns=("features", "sources")).sources
        assert all(Path(s).is_absolute() and Path(s).is_file() for s in sources)
    assert "6 rows classified" in text and "open " in text

    index = read_page(out / "report" / "index.html")
    counts = {a["data-class"]: int(a["data-count"]) for a in index.having("data-count", "tr")}
    assert counts == {name: int((results.names[:, 0] == name).sum()) for name in cache.classes}
    assert {a["href"] for a in index.having("href", "a")} >= {"../report-val/index.html",
                                                            "label.html"}
    val_index = read_page(out / "report-val" / "index.html")
    assert val_index.having("data-accuracy", "p")[0]["data-rows"] == "2"


def test_class_pages_link_thumbnails_images_and_evidence(first_run):
    root, out, _ = first_run
    results = read_output(out / "predictions")
    evidence = {i: [e for e in ids if e] for i, ids in zip(results.ids.tolist(),
                                                          results.evidence_ids.tolist(),
                                                          strict=True)}
    assert all(len(ids) == 3 for ids in evidence.values())  # --evidence 3; every class has 3+
    cache = Cache.load(out / "cache")
    seen = set()
    for c, name in enumerate(cache.classes):
        page = read_page(out / "report" / class_file(c))
        thumbs = [a["src"] for a in page.having("src", "img")]
        for src in thumbs:
            with Image.open(out / "report" / src) as img:
                assert 0 < max(img.size) <= 128
        links = [Path(unquote(urlparse(a["href"]).path)) for a in page.having("href", "a")
                 if a["href"].startswith("file://")]
        rows = {p.name for p in links if p.parent == (root / "new").resolve()}
        assert rows == set(results.ids[results.names[:, 0] == name].tolist())
        shot_links = [p for p in links if p.parent.parent == (root / "labelled").resolve()]
        assert {p.parent.name for p in shot_links} <= {name}  # keys of the top class
        shots = [a for a in page.having("data-kind", "div")]
        class_shots = [a for a in shots if a["data-kind"] == "class"]
        assert len(class_shots) == min(8, int((cache.labels == c).sum()))
        cards = [a["data-id"] for a in page.having("data-id", "div") if "card" in a["class"]]
        shown = [a["data-id"] for a in shots if a["data-kind"] == "evidence"]
        assert shown == [e for i in cards for e in evidence[i]]
        assert len(thumbs) == len(rows) + len(shots) == len(links)
        seen |= rows
    assert seen == set(results.ids.tolist())


def test_rerun_skips_then_picks_up_new_images(first_run, model_args):
    root, out, _ = first_run
    parts = sorted(p.stat().st_mtime_ns for p in (out / "predictions").glob("part-*"))
    thumbs = {p.name: p.stat().st_mtime_ns for p in (out / "report" / "thumbs").iterdir()}
    text = _run(root, model_args)
    assert "0 images encoded this run" in text and "unchanged since the last run" in text
    assert sorted(p.stat().st_mtime_ns for p in (out / "predictions").glob("part-*")) == parts
    assert {p.name: p.stat().st_mtime_ns for p in (out / "report" / "thumbs").iterdir()} == thumbs

    rng = np.random.default_rng(1)
    _image(root / "labelled" / "yellow" / "y0.png", (220, 220, 20), rng)  # a new class
    _image(root / "labelled" / "red" / "red_extra.png", COLOURS["red"], rng)
    _image(root / "new" / "later.jpg", (220, 220, 20), rng)
    text = _run(root, model_args)
    assert "labelled: 2 images encoded this run" in text and "2 shots added" in text
    assert "new images: 1 encoded this run; 7 rows classified" in text
    cache = Cache.load(out / "cache")
    assert cache.classes[-1] == "yellow" and len(cache) == 15 and cache.text.shape == (4, 32)
    assert Journal.load(out / "predictions").spec.cache_generation == cache.generation
    assert "later.jpg" in read_output(out / "predictions").ids.tolist()
    assert (out / "report" / class_file(3)).exists()


def test_labelling_loop_through_add_shots(first_run, model_args):
    root, out, _ = first_run
    rows = list(csv.reader((out / "report" / "to-label.csv").open()))
    assert rows[0] == ["path", "label"] and len(rows) == 1 + len(
        (out / "report" / "to-label.txt").read_text().split())
    assert {Path(p).parent for p, _ in rows[1:]} == {(root / "new").resolve()}
    labelled = out / "labelled.csv"  # the user corrects the labels: here, from the file names
    with labelled.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label"]] + [[p, Path(p).name.split("_")[0]]
                                                       for p, _ in rows[1:] if "_new" in p][:2])
    before = len(Cache.load(out / "cache"))
    res = CliRunner().invoke(main, ["add-shots", str(out / "cache"), "--images", str(labelled),
                                    *model_args[:6], "--views", "2"])
    assert res.exit_code == 0, res.output
    cache = Cache.load(out / "cache")
    assert len(cache) == before + 2
    text = _run(root, model_args)
    assert "unchanged since the last run" not in text  # the changed cache is tuned again
    assert Journal.load(out / "predictions").spec.cache_generation == \
        Cache.load(out / "cache").generation


def test_finetune_then_back_to_training_free(first_run, model_args):
    root, _, _ = first_run
    out = root / "run-f"
    args = ["fit-predict", str(root / "labelled"), str(root / "new"), "--out", str(out),
            *model_args, "--epochs", "2"]
    res = CliRunner().invoke(main, [*args, "--finetune"])
    assert res.exit_code == 0, res.output
    assert "Tip-Adapter-F epoch" in res.output
    tuned = Cache.load(out / "cache")
    assert tuned.method == "tip-f"
    res = CliRunner().invoke(main, args)  # the option changed: refit without fine-tuning
    assert res.exit_code == 0, res.output
    plain = Cache.load(out / "cache")
    assert plain.method == "tip" and "Tip-Adapter-F" not in res.output
    store = Store.open(out / "store")
    raw = store.select(row_ids=plain.row_ids, columns=("features", "row_ids"))
    order = np.argsort(raw.row_ids)[np.searchsorted(np.sort(raw.row_ids), plain.row_ids)]
    assert np.allclose(plain.keys, raw.features[order], atol=1e-6)  # the stored features again
    assert Journal.load(out / "predictions").spec.cache_generation == plain.generation
    res = CliRunner().invoke(main, [*args, "--shots", "2"])
    assert res.exit_code == 2 and "use the same --shots and --templates, or a new --out" in \
        res.output
    assert Cache.load(out / "cache").generation == plain.generation


def test_no_class_folders_is_bad_input(tmp_path, model_args):
    flat = tmp_path / "flat"
    _image(flat / "a.png", (1, 2, 3), np.random.default_rng(0))
    res = CliRunner().invoke(main, ["fit-predict", str(flat), str(flat), "--out",
                                    str(tmp_path / "o"), *model_args])
    assert res.exit_code == 2 and "one sub-folder per class" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                    "(Debian: apt-get install chromium)")
def test_report_in_headless_chromium(first_run, tmp_path):
    root, out, _ = first_run
    site = tmp_path / "site"
    shutil.copytree(out / "report", site)  # opens from anywhere on disk
    cache = Cache.load(out / "cache")
    results = read_output(out / "predictions")
    dom = Elements(chromium("--dump-dom", (site / "index.html").as_uri()).stdout)
    counts = {a["data-class"]: int(a["data-count"]) for a in dom.having("data-count", "tr")}
    assert counts == {name: int((results.names[:, 0] == name).sum()) for name in cache.classes}

    red = cache.classes.index("red")
    page = Elements(chromium("--dump-dom", (site / class_file(red)).as_uri()).stdout)
    images = [a for a in page.having("src", "img")]
    assert images and all((site / a["src"]).exists() for a in images)
    assert any(a["href"].startswith("file://") for a in page.having("href", "a"))

    shot = tmp_path / "red.png"
    chromium(f"--screenshot={shot}", "--window-size=900,700", (site / class_file(red)).as_uri())
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    assert (pixels.std(axis=0) > 10).all()  # not blank
    reddish = (pixels[:, 0] > 150) & (pixels[:, 1] < 90) & (pixels[:, 2] < 90)
    assert reddish.sum() > 500  # the red thumbnails are drawn
