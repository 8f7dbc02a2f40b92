"""`extract --engine ray` stores exactly the local engine's rows and report, and resumes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tipretrieval.cli import main
from tipretrieval.encode import load_encoder
from tipretrieval.encode.extract import ExtractOptions, extract
from tipretrieval.encode.ray_extract import completed_blocks, extract_ray
from tipretrieval.encode.resolve import EncoderSpec
from tipretrieval.encode.sources import Source, scan_source
from tipretrieval.errors import BadInput
from tipretrieval.store.store import Store

ray = pytest.importorskip("ray")

OPTIONS = {"views": 3, "batch_size": 8, "chunk": 4}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def model_args(tiny_clip_config, tiny_checkpoint):
    return ["--model", tiny_clip_config, "--checkpoint", tiny_checkpoint]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _by_id(store_dir):
    rows = Store.open(store_dir).select(with_views=True)
    return rows.take(np.argsort(rows.ids.astype(str)))


@pytest.mark.usefixtures("local_ray")
def test_ray_extract_equals_local_and_resumes(tiny_clip_config, tiny_checkpoint, model_args,
                                              image_folder, tmp_path):
    folder = image_folder(tmp_path / "imgs", per_class=5)
    src = scan_source(folder)
    encoder = load_encoder(str(tiny_clip_config), checkpoint=tiny_checkpoint, device="cpu")
    local = extract(src, tmp_path / "local", encoder,
                    ExtractOptions(workers=0, progress=False, **OPTIONS),
                    report_path=tmp_path / "local.json")

    # a first Ray run stores part of the source, as a killed job would have
    spec = EncoderSpec(str(tiny_clip_config), checkpoint=str(tiny_checkpoint))
    first = extract_ray(Source(src.root, src.items[:7]), tmp_path / "ray", spec,
                        ExtractOptions(progress=False, **OPTIONS))
    assert first.encoded == 6 and [b.id for b in first.bad] == ["cat/broken.jpg"]

    ray_dir = tmp_path / "ray"
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    res = _run("extract", folder, "--store", ray_dir, "--engine", "ray", *opts, *model_args)
    assert res.exit_code == 0, res.output
    assert "encoded 4, already stored 6, skipped 2 bad files" in res.output

    a, b = _by_id(tmp_path / "local"), _by_id(ray_dir)
    assert len(a) == 10 and list(a.ids) == list(b.ids)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.views, b.views)
    assert list(a.labels) == list(b.labels) and list(a.sources) == list(b.sources)
    assert Store.open(ray_dir).classes == Store.open(tmp_path / "local").classes
    report = json.loads((ray_dir / "extract-report-train.json").read_text())
    assert report["bad"] == json.loads((tmp_path / "local.json").read_text())["bad"]
    assert [b["id"] for b in report["bad"]] == [b.id for b in local.bad]
    assert len(local.bad) == 2

    res = _run("extract", folder, "--store", ray_dir, "--engine", "ray", *opts, *model_args)
    assert "encoded 0, already stored 10, skipped 2 bad files" in res.output
    assert len(Store.open(ray_dir)) == 10


def test_blocks_regrouped_across_interleaved_batches():
    def rows(block, pos, error=""):
        n = len(pos)
        return {"block": np.full(n, block), "pos": np.array(pos),
                "features": np.array(pos, np.float32)[:, None] + 10 * block,
                "error": np.array([error] * n, dtype=object)}

    batches = [rows(1, [2, 0]), rows(0, [1]), rows(1, [1], "OSError: bad"), rows(0, [0])]
    done = list(completed_blocks(batches, [2, 3]))
    assert [b for b, _ in done] == [1, 0]
    one = done[0][1]
    assert one.done == [0, 2] and one.failed == [(1, "OSError: bad")]
    assert one.features[:, 0].tolist() == [10, 12] and one.views is None
    assert done[1][1].done == [0, 1]


def test_refusals_leave_no_store(model_args, tiny_clip_config, image_folder, tmp_path,
                                 monkeypatch):
    folder = image_folder(tmp_path / "imgs", per_class=2)
    with pytest.raises(BadInput, match="`checkpoint=` FILE"):
        extract_ray(scan_source(folder), tmp_path / "s", EncoderSpec(str(tiny_clip_config)))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    res = _run("extract", folder, "--store", tmp_path / "s", "--engine", "ray", *model_args)
    assert res.exit_code == 2 and "pip install 'tipretrieval[ray]'" in res.output
    assert not (tmp_path / "s").exists()
