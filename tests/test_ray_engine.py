"""The Ray engine writes exactly the local engine's output, and resumes a partial job."""

from __future__ import annotations

import pytest
from test_classify import assert_same, make_inputs, part_bytes

from tipretrieval.jobs.classify import ClassifyOptions, Journal, classify_store, read_output

ray = pytest.importorskip("ray")

OPTIONS = ClassifyOptions(batch_size=64, logits=True, split="query", fmt="h5", mode="retrieval",
                          k=8, evidence=3)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("ray"), queries_per_class=20)


def test_ray_output_equals_local(inputs, tmp_path):
    classify_store(*inputs, tmp_path / "local", OPTIONS, show_progress=False)
    classify_store(*inputs, tmp_path / "ray", OPTIONS, engine="ray", show_progress=False)
    assert part_bytes(tmp_path / "ray") == part_bytes(tmp_path / "local")
    assert_same(read_output(tmp_path / "ray"), read_output(tmp_path / "local"))


def test_ray_resumes_a_partial_local_job(inputs, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, OPTIONS, show_progress=False)
    expected = part_bytes(out)
    journal = Journal.load(out)
    journal.parts = {i: journal.parts[i] for i in sorted(journal.parts)[::2]}  # as after a kill
    journal.complete = False
    journal.save(out)
    for name in set(expected) - {p.file for p in journal.parts.values()}:
        (out / name).unlink()
    classify_store(*inputs, out, OPTIONS, engine="ray", show_progress=False)
    assert part_bytes(out) == expected
    assert len(read_output(out)) == 400
