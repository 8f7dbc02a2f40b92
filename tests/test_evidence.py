"""classify --evidence: the keys behind each row's top class, checked against the exact logits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_classify import make_inputs

from tipretrieval.cache.cache import Cache
from tipretrieval.errors import BadInput
from tipretrieval.jobs.classify import ClassifyOptions, classify_store, read_output
from tipretrieval.jobs.classify.output import WRITERS, Results
from tipretrieval.store.store import Store

CLI = [sys.executable, "-m", "tipretrieval"]
N = 6  # more than the 4 shots per class: the last two slots are padding
EVIDENCE = ("evidence_row_ids", "evidence_ids", "evidence_labels", "evidence_sims")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("evidence"), queries_per_class=10)


@pytest.fixture(scope="module")
def exact(inputs, tmp_path_factory) -> Results:
    out = tmp_path_factory.mktemp("exact") / "out"
    classify_store(*inputs, out, ClassifyOptions(batch_size=64, logits=True, split="query",
                                                 evidence=N), show_progress=False)
    return read_output(out)


def test_evidence_sums_to_the_exact_logit_of_the_top_class(inputs, exact):
    cache = Cache.load(inputs[0])
    store = Store.open(inputs[1])
    x = store.select(row_ids=exact.row_ids).features.astype(np.float64)
    top = exact.classes[:, 0]
    assert np.array_equal(exact.evidence_labels[:, :4], np.repeat(top[:, None], 4, axis=1))
    assert (exact.evidence_labels[:, 4:] == -1).all()
    assert (exact.evidence_row_ids[:, 4:] == -1).all()
    assert (exact.evidence_ids[:, 4:] == "").all() and np.isnan(exact.evidence_sims[:, 4:]).all()
    sims = exact.evidence_sims[:, :4].astype(np.float64)
    assert (np.diff(sims, axis=1) <= 0).all()  # best first
    contribution = np.exp(-5.0 * (1.0 - sims)).sum(axis=1)
    text = 100.0 * np.einsum("bd,bd->b", x, cache.text[top].astype(np.float64))
    top_logit = exact.logits[np.arange(len(top)), top]
    np.testing.assert_allclose(text + 2.0 * contribution, top_logit, rtol=1e-5, atol=1e-4)


def test_evidence_keys_are_the_most_similar_keys_of_the_class_by_numpy(inputs, exact):
    cache = Cache.load(inputs[0])
    store = Store.open(inputs[1])
    names = dict(zip(store.select(row_ids=cache.row_ids).row_ids.tolist(),
                     store.select(row_ids=cache.row_ids).ids.tolist(), strict=True))
    x = store.select(row_ids=exact.row_ids).features
    for b, c in enumerate(exact.classes[:, 0]):
        mine = np.flatnonzero(cache.labels == c)
        sims = cache.keys[mine] @ x[b]
        order = mine[np.argsort(-sims, kind="stable")]
        assert exact.evidence_row_ids[b, :4].tolist() == cache.row_ids[order].tolist()
        assert exact.evidence_ids[b, :4].tolist() == [names[r] for r in cache.row_ids[order]]
        np.testing.assert_allclose(exact.evidence_sims[b, :4], np.sort(sims)[::-1], atol=1e-6)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_evidence_round_trips_in_every_format(inputs, exact, tmp_path, fmt):
    out = tmp_path / fmt
    classify_store(*inputs, out, ClassifyOptions(batch_size=64, logits=True, split="query",
                                                 evidence=N, fmt=fmt), show_progress=False)
    got = read_output(out)
    for name in EVIDENCE:
        a, b = getattr(got, name), getattr(exact, name)
        assert a.dtype == b.dtype and a.shape == (len(exact), N), name
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name


def test_retrieval_mode_reports_the_same_evidence(inputs, exact, tmp_path):
    classify_store(*inputs, tmp_path / "r", ClassifyOptions(
        batch_size=64, split="query", evidence=N, mode="retrieval", k=4), show_progress=False)
    got = read_output(tmp_path / "r")
    same = got.classes[:, 0] == exact.classes[:, 0]
    assert same.mean() > 0.9
    assert np.array_equal(got.evidence_row_ids[same], exact.evidence_row_ids[same])


def test_no_evidence_columns_unless_asked(inputs, tmp_path):
    classify_store(*inputs, tmp_path / "o", ClassifyOptions(batch_size=64, split="query"),
                   show_progress=False)
    got = read_output(tmp_path / "o")
    assert got.evidence == 0 and all(getattr(got, n) is None for n in EVIDENCE)


def test_bad_evidence_is_refused(inputs, tmp_path):
    with pytest.raises(BadInput, match="evidence"):
        ClassifyOptions(evidence=-1)
    run = subprocess.run([*CLI, "classify", str(inputs[0]), "--store", str(inputs[1]),
                          "--out", str(tmp_path / "z"), "--method", "zero-shot",
                          "--evidence", "3"], capture_output=True, text=True)
    assert run.returncode == 2 and "zero-shot uses no cache keys" in run.stderr
    assert not (tmp_path / "z").exists()


def test_cli_evidence_csv(inputs, exact, tmp_path):
    out = tmp_path / "csv"
    run = subprocess.run([*CLI, "classify", str(inputs[0]), "--store", str(inputs[1]),
                          "--split", "query", "--out", str(out), "--format", "csv",
                          "--batch-size", "64", "--evidence", "2", "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    header = next(out.glob("part-*.csv")).read_text().splitlines()[0]
    assert '"evidence_id_1"' in header and '"evidence_sim_2"' in header
    got = read_output(out)
    assert np.array_equal(got.evidence_ids, exact.evidence_ids[:, :2])
