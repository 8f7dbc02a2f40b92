"""The demo, quick mode: every number it reports is recomputed here with plain numpy from the
arrays it stored (store features, cache keys, text classifier)."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from report_helpers import read_page

from tipretrieval.cache.cache import Cache
from tipretrieval.cli import main
from tipretrieval.demo.run import QUICK
from tipretrieval.demo.synthetic import make_dataset
from tipretrieval.jobs.classify import read_output
from tipretrieval.store.store import Store


def logits(x, text, keys, key_labels, alpha, beta):
    """100 x W^T + alpha * per-class sums of exp(-beta (1 - x.k)), in float64."""
    x = x.astype(np.float64)
    onehot = np.eye(text.shape[0])[key_labels]
    affinity = np.exp(-beta * (1 - x @ keys.T.astype(np.float64))) @ onehot
    return 100 * x @ text.T.astype(np.float64) + alpha * affinity


def accuracy(scores, labels):
    return 100 * float(np.mean(scores.argmax(1) == labels))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    run = CliRunner().invoke(main, ["demo", "--out", str(out), "--quick", "--seed", "1"])
    assert run.exit_code == 0, run.output
    return out, run.output, json.loads((out / "results.json").read_text())


def test_summary_says_synthetic_and_how_to_run_on_images(demo):
    out, text, results = demo
    assert "SYNTHETIC" in text and "not real images" in text
    for step in ("extract", "text", "build", "tune", "finetune", "eval", "classify"):
        assert f"tipretrieval {step} " in text
    assert f"| {QUICK.shots[-1]} | {results['zero_shot']:.2f} |" in text
    assert str(out) in text


def test_numbers_match_independent_computation(demo):
    out, _, results = demo
    store = Store.open(out / "store")
    test, val = store.labelled("test"), store.labelled("val")
    train = store.labelled("train")
    by_row = {int(r): i for i, r in enumerate(train.row_ids)}
    tol = 100.5 / len(test)  # at most one float16/float32 tie may flip
    assert results["test_rows"] == len(test) == QUICK.num_classes * QUICK.sizes.test
    assert [s["shots"] for s in results["shots"]] == sorted(QUICK.shots)
    for shot in results["shots"]:
        cache = Cache.load(shot["cache"])
        k = shot["shots"]
        assert np.bincount(cache.labels).tolist() == [k] * QUICK.num_classes
        pos = np.array([by_row[int(r)] for r in cache.row_ids])
        np.testing.assert_array_equal(train.labels[pos], cache.labels)
        keys, text = train.features[pos], cache.text
        zero = accuracy(test.features @ text.T, test.labels)
        assert results["zero_shot"] == pytest.approx(zero, abs=tol)
        a, b = shot["alpha"], shot["beta"]
        tip = logits(test.features, text, keys, cache.labels, a, b)
        assert shot["tip"] == pytest.approx(accuracy(tip, test.labels), abs=tol)
        only = logits(test.features, 0 * text, keys, cache.labels, 1.0, b)
        assert shot["cache_only"] == pytest.approx(accuracy(only, test.labels), abs=tol)
        val_tip = logits(val.features, text, keys, cache.labels, a, b)
        assert shot["val_acc"] == pytest.approx(accuracy(val_tip, val.labels), abs=100.5 / len(val))
        if shot["tip_f"] is None:
            assert cache.method == "tip"
            continue
        assert cache.method == "tip-f" and not np.allclose(cache.keys, keys, atol=1e-4)
        assert (cache.alpha, cache.beta) == (shot["tip_f_alpha"], shot["tip_f_beta"])
        tip_f = logits(test.features, text, cache.keys, cache.labels, cache.alpha, cache.beta)
        assert shot["tip_f"] == pytest.approx(accuracy(tip_f, test.labels), abs=tol)
    assert results["shots"][-1]["tip_f"] is not None


def test_query_predictions(demo):
    out, _, results = demo
    store = Store.open(out / "store")
    query = store.select(split="query")
    cache = Cache.load(results["shots"][-1]["cache"])
    predicted = read_output(results["predictions"])
    assert len(predicted) == len(query) == results["query_rows"]
    order = np.argsort(query.ids)
    assert np.array_equal(np.sort(predicted.ids), query.ids[order])
    top1 = dict(zip(predicted.ids, predicted.classes[:, 0], strict=True))
    mine = logits(query.features, cache.text, cache.keys, cache.labels, cache.alpha,
                  cache.beta).argmax(1)
    agree = np.mean([top1[i] == m for i, m in zip(query.ids, mine, strict=True)])
    assert agree >= 1 - 1.01 / len(query)
    truth = make_dataset(QUICK.num_classes, QUICK.dim, seed=1).labels_for("query",
                                                                        QUICK.sizes.query)
    hits = [top1[i] == truth[int(i.split("/")[1])] for i in query.ids]
    assert results["query_acc"] == pytest.approx(100 * np.mean(hits))


def test_ends_with_the_reports(demo):
    out, text, results = demo
    assert text.rstrip().endswith(f"(labelled test rows: {results['test_report']})")
    assert results["report"] in text and "ids instead of thumbnails" in text
    predicted = read_output(results["predictions"])
    cache = Cache.load(results["shots"][-1]["cache"])
    index = read_page(Path(results["report"]))
    counts = {a["data-class"]: int(a["data-count"]) for a in index.having("data-count", "tr")}
    assert counts == {n: int((predicted.classes[:, 0] == c).sum())
                      for c, n in enumerate(cache.classes)}
    assert "ids are shown instead of thumbnails" in " ".join(index.text)
    assert "no evidence shots" not in " ".join(index.text)  # classified with evidence
    cards = [a for a in read_page(Path(results["report"]).parent / "label.html")
             .having("data-id", "div") if "card" in a["class"]]
    assert len(cards) == min(50, len(predicted))
    test = read_page(Path(results["test_report"])).having("data-accuracy", "p")[0]
    assert test["data-rows"] == str(results["test_rows"])  # same rows as the accuracy table
    assert float(test["data-accuracy"]) == pytest.approx(results["shots"][-1]["tip_f"],
                                                         abs=100.5 / results["test_rows"])


def test_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    run = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--quick"])
    assert run.exit_code == 2 and "not empty" in run.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def balanced_logits(x, text, keys, key_labels, alpha, beta, weighting):
    """`logits` with each class's cache term times mean keys per class / its keys."""
    c = text.shape[0]
    counts = np.bincount(key_labels, minlength=c)
    w = counts.sum() / np.count_nonzero(counts) / np.maximum(counts, 1)
    w = w if weighting == "balanced" else np.ones(c)
    plain = logits(x, text, keys, key_labels, alpha, beta) - logits(x, text, keys[:0],
                                                                    key_labels[:0], 0, beta)
    return logits(x, text, keys[:0], key_labels[:0], 0, beta) + plain * w


def test_unbalanced_rows_match_independent_computation(demo):
    out, text, results = demo
    rows = results["unbalanced"]
    assert [(r["step"].split(",")[0], r["weighting"]) for r in rows] == [
        ("before add-shots (2 shots)", "balanced"), ("after add-shots", "balanced"),
        ("after add-shots", "sum"), ("after add-shots", "balanced"), ("after add-shots", "sum")]
    train_per_class = QUICK.sizes.train
    assert rows[0]["spread"] == "2 / 2 / 2"
    assert rows[1]["spread"] == f"2 / {(2 + train_per_class) / 2:g} / {train_per_class}"
    assert "add-shots on a 2-shot cache" in text
    cache = Cache.load(out / "cache-unbalanced")
    store = Store.open(out / "store")
    test = store.labelled("test")
    counts = np.bincount(cache.labels)
    assert counts[1::2].tolist() == [train_per_class] * (QUICK.num_classes // 2)
    assert counts[0::2].tolist() == [2] * (QUICK.num_classes // 2)
    tol = 100.5 / len(test)
    for row in rows[1:]:
        got = balanced_logits(test.features, cache.text, cache.keys, cache.labels, row["alpha"],
                              row["beta"], row["weighting"])
        assert row["tip"] == pytest.approx(accuracy(got, test.labels), abs=tol)
    assert (cache.alpha, cache.beta) == (rows[3]["alpha"], rows[3]["beta"])
    assert cache.stale_tuning() is None and cache.info.weighting == "balanced"
