"""`tipretrieval extract` / `text` end to end, and resuming an extract killed with SIGKILL."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from procs import wait_until_all_open

from tipretrieval.cli import main
from tipretrieval.encode import load_templates, text_classifier
from tipretrieval.encode.text import TextClassifier
from tipretrieval.store.lock import LOCK_NAME, writer_lock
from tipretrieval.store.manifest import MANIFEST_NAME
from tipretrieval.store.store import Store

CLASSES = ["cat", "dog_breed"]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def model_args(tiny_clip_config, tiny_checkpoint):
    return ["--model", tiny_clip_config, "--checkpoint", tiny_checkpoint, "--device", "cpu"]


def test_cli_extract_then_text(tiny_encoder, model_args, image_folder, tmp_path):
    folder = image_folder(tmp_path / "imgs")
    store = tmp_path / "store"
    res = _run("extract", folder, "--store", store, "--views", 2, "--workers", 1, *model_args)
    assert res.exit_code == 0, res.output
    assert "encoded 6, already stored 0, skipped 2 bad files" in res.output
    report = store / "extract-report-train.json"
    assert report.is_file() and "notes.txt" in report.read_text()
    prov = Store.open(store).provenance
    assert (prov.encoder, prov.dim, prov.preprocess) == ("tiny_clip", 32,
                                                        tiny_encoder.provenance.preprocess)
    assert prov.weights == "sha256:" + hashlib.sha256(model_args[3].read_bytes()).hexdigest()

    out = tmp_path / "text.npz"
    res = _run("text", "--store", store, "--templates", "tip_imagenet", "--out", out, *model_args)
    assert res.exit_code == 0, res.output
    clf = TextClassifier.load(out, expect=Store.open(store).provenance)
    assert clf.classes == CLASSES
    expected = text_classifier(tiny_encoder, CLASSES, load_templates("tip_imagenet"))
    assert np.abs(clf.weights - expected).max() < 1e-5

    res = _run("extract", folder, "--store", store)  # store's encoder came from a checkpoint
    assert res.exit_code == 2 and "--checkpoint FILE" in res.output


def test_cli_refuses_another_encoder(model_args, tiny_clip_config, image_folder, tmp_path):
    folder = image_folder(tmp_path / "imgs", per_class=2)
    store = tmp_path / "store"
    assert _run("extract", folder, "--store", store, *model_args).exit_code == 0
    import torch  # a checkpoint with different bytes = a different encoder

    state = torch.load(model_args[3])
    state["logit_scale"] = state["logit_scale"] + 1
    other = tmp_path / "other.pt"
    torch.save(state, other)
    res = _run("text", "--store", store, "--templates", "dtd", "--out", tmp_path / "t.npz",
               "--model", tiny_clip_config, "--checkpoint", other)
    assert res.exit_code == 2 and "encoder" in res.output
    assert not (tmp_path / "t.npz").exists()
    res = _run("text", "--templates", "dtd", "--out", tmp_path / "t.npz")
    assert res.exit_code == 2 and "--classes FILE or --store DIR" in res.output


def _shards(store):
    manifest = store / MANIFEST_NAME
    return manifest.read_text().count('"first_row_id"') if manifest.exists() else 0


def _images(folder, n, seed):
    """`n` random 24x24 PNGs named 000.png, 001.png, ... in a new `folder`."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.png")
    return folder


def _extract_cmd(folder, store, model_args):
    """`tipretrieval extract` of `folder` into `store` in chunks of 4 images, as a subprocess."""
    return [sys.executable, "-m", "tipretrieval", "extract", str(folder), "--store", str(store),
            "--chunk", "4", "--batch-size", "4", "--workers", "0", *map(str, model_args)]


def test_extract_resumes_after_kill(model_args, tmp_path):
    n = 160
    store = tmp_path / "store"
    cmd = _extract_cmd(_images(tmp_path / "imgs", n, seed=0), store, model_args)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ | {"HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 60
    while _shards(store) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(Store.open(store))
    assert 0 < partial < n, "the kill should land mid-run"

    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert f"encoded {n - partial}, already stored {partial}" in done.stdout
    ids = Store.open(store).select().ids.astype(str)
    assert len(ids) == n and set(ids) == {f"{i:03d}.png" for i in range(n)}


def test_two_extracts_creating_one_store_both_land_each_image_once(model_args, tmp_path):
    """Both runs start on a store that does not exist yet and race to create it (both wait
    on the writer lock first); the second opens the first's store, and rows either run stored
    meanwhile are skipped at append time, so every image is stored exactly once."""
    n = 40
    store = tmp_path / "store"
    cmd = _extract_cmd(_images(tmp_path / "imgs", n, seed=1), store, model_args)
    with writer_lock(store, 120):  # a third writer holds the lock until both runs wait on it
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=os.environ) for _ in range(2)]
        wait_until_all_open(procs, store / LOCK_NAME)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    encoded = [int(re.search(r"encoded (\d+), already stored (\d+)", out)[1]) for out, _ in outs]
    assert sum(encoded) == n
    ids = Store.open(store).select().ids.astype(str)
    assert sorted(ids) == [f"{i:03d}.png" for i in range(n)]
