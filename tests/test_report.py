"""`tipretrieval report` on a synthetic classify output (features only, no images): every figure
of the pages is recomputed here from the output and the store's labels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner
from report_helpers import read_page

from tipretrieval.cache.cache import Cache
from tipretrieval.cli import main
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.jobs.classify import ClassifyOptions, Results, classify_store, read_output
from tipretrieval.jobs.report import ReportOptions, build_report
from tipretrieval.jobs.report.html import class_file
from tipretrieval.jobs.report.select import Smallest, take
from tipretrieval.jobs.report.stats import BINS


@pytest.fixture(scope="module")
def labelled_output(tmp_path_factory):
    """A test split of 10 classes classified in 4 parts; classes 0-4 have 1 key, 5-9 have 3."""
    root = tmp_path_factory.mktemp("report")
    ds = make_dataset(10, 32, group_size=5, seed=3)
    store = write_store(root / "store", ds, SplitSizes(train=3, val=2, test=12, query=2,
                                                        views=2))
    cache = Cache.build(store, 3, text=ds.text)
    keep = (cache.labels >= 5) | (np.arange(len(cache)) % 3 == 0)
    cache.remove_shots(cache.row_ids[~keep])
    cache.save(root / "cache")
    out = root / "preds"
    classify_store(root / "cache", root / "store", out,
                   ClassifyOptions(top_k=3, split="test", batch_size=64), show_progress=False)
    return root, store, ds


def _truth(store, results):
    test = store.labelled("test")
    by_row = dict(zip(test.row_ids.tolist(), test.labels.tolist(), strict=True))
    return np.array([by_row[r] for r in results.row_ids.tolist()])


def test_summary_counts_histogram_and_accuracy(labelled_output):
    root, store, ds = labelled_output
    res = CliRunner().invoke(main, ["report", str(root / "preds"), "--html", str(root / "html"),
                                    "--store", str(root / "store"), "--to-label", "7"])
    assert res.exit_code == 0, res.output
    results = read_output(root / "preds")
    truth, top = _truth(store, results), results.classes[:, 0]
    assert f"report: {len(results)} rows, {2 + 10} pages" in res.output

    index = read_page(root / "html" / "index.html")
    rows = {a["data-class"]: int(a["data-count"]) for a in index.having("data-count", "tr")}
    assert rows == {name: int((top == c).sum()) for c, name in enumerate(ds.classes)}
    text = " ".join(index.text)
    hist = np.histogram(results.probs[:, 0], bins=BINS, range=(0, 1))[0]
    assert "rows per bin of width 0.05: " + " ".join(map(str, hist)) in text
    overall = index.having("data-accuracy", "p")[0]
    assert overall["data-rows"] == str(len(truth))
    assert overall["data-accuracy"] == f"{100 * np.mean(top == truth):.2f}"
    assert "ids are shown instead of thumbnails" in text  # synthetic rows have no images

    pairs = Counter((int(t), int(p)) for t, p in zip(truth, top, strict=True) if t != p)
    first = index.having("data-true", "tr")[0]
    most = max(pairs.values())
    assert pairs[(ds.classes.index(first["data-true"]),
                  ds.classes.index(first["data-predicted"]))] == most
    by_shots = {a["data-shots"]: a for a in index.having("data-shots", "tr")}
    assert set(by_shots) == {"1", "3-4"}
    for shots, members in (("1", truth < 5), ("3-4", truth >= 5)):
        row = by_shots[shots]
        assert (row["data-classes"], row["data-rows"]) == ("5", str(members.sum()))
        assert row["data-accuracy"] == f"{100 * np.mean(top[members] == truth[members]):.2f}"
    per_class = {a["data-class"]: a["data-accuracy"] for a in index.having("data-accuracy", "tr")
                 if "data-class" in a}
    assert per_class == {name: f"{100 * np.mean(top[truth == c] == c):.2f}"
                         for c, name in enumerate(ds.classes)}


def test_class_pages_show_their_rows_and_evidence_free_note(labelled_output):
    root, store, ds = labelled_output
    build_report(root / "preds", root / "capped", store=root / "store",
                 options=ReportOptions(per_class=4, to_label=5))
    results = read_output(root / "preds")
    top = results.classes[:, 0]
    for c, name in enumerate(ds.classes):
        page = read_page(root / "capped" / class_file(c))
        cards = page.having("data-id", "div")
        cards = [a for a in cards if "card" in a.get("class", "")]
        members = set(results.ids[top == c].tolist())
        assert len(cards) == min(4, len(members))
        assert {a["data-id"] for a in cards} <= members
        summary = page.having("data-shown", "p")[0]
        assert (summary["data-class"], summary["data-count"]) == (name, str(len(members)))
        shots = [a for a in page.having("data-id", "div") if a.get("class") == "shot"]
        assert len(shots) == (1 if c < 5 else 3)
        assert "no evidence shots" in " ".join(page.text)
    text = (root / "capped" / "index.html").read_text()
    assert "at most 4 of its rows" in text


def test_least_sure_rows_spread_over_classes(labelled_output):
    root, _, _ = labelled_output
    build_report(root / "preds", root / "unsure", store=root / "store",
                 options=ReportOptions(to_label=13))
    results = read_output(root / "preds")
    margin = results.probs[:, 0] - results.probs[:, 1]
    by_class: dict[int, list[int]] = {}
    for i in sorted(range(len(results)), key=lambda i: margin[i]):
        by_class.setdefault(int(results.classes[i, 0]), []).append(i)
    ranked = sorted(((rank, margin[i], i) for rows in by_class.values()
                     for rank, i in enumerate(rows)))
    expected = [results.ids[i] for _, _, i in ranked[:13]]
    assert (root / "unsure" / "to-label.txt").read_text().split() == expected
    assert not (root / "unsure" / "to-label.csv").exists()  # no images: no path,label CSV
    page = read_page(root / "unsure" / "label.html")
    assert [a["data-id"] for a in page.having("data-id", "div")
            if "card" in a["class"]] == expected


def test_report_bad_input(labelled_output, tmp_path):
    root, _, _ = labelled_output
    res = CliRunner().invoke(main, ["report", str(root / "store"), "--html", str(tmp_path / "h")])
    assert res.exit_code == 2 and "not a classify output" in res.output
    res = CliRunner().invoke(main, ["report", str(root / "preds"), "--html", str(tmp_path / "h"),
                                    "--store", str(root / "cache")])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["report", str(root / "preds"), "--html", str(tmp_path / "h"),
                                    "--per-class", "0"])
    assert res.exit_code == 2 and "--per-class" in res.output
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("dtype", [np.float32, np.uint64])
def test_smallest_per_class_equals_a_global_stable_sort(dtype):
    rng = np.random.default_rng(0)
    n = 3000
    groups, scores = rng.integers(0, 7, n), rng.integers(0, 40, n).astype(dtype)  # many ties
    results = Results(ids=np.array([f"r{i}" for i in range(n)], dtype=object),
                      row_ids=np.arange(n), classes=groups[:, None],
                      names=np.full((n, 1), "x", dtype=object),
                      probs=np.ones((n, 1), dtype=np.float32))
    kept = Smallest(cap=9)
    cuts = np.sort(rng.choice(np.arange(1, n), 40, replace=False))
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
        kept.add(take(results, np.arange(a, b)), scores[a:b])
    for c, rows in kept.by_class().items():
        expected = sorted(np.flatnonzero(groups == c), key=lambda i: (scores[i], i))[:9]
        assert rows.row_ids.tolist() == expected
    assert sorted(kept.by_class()) == list(range(7))
