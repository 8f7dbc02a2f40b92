"""Caches that stay right as they grow: balanced weighting, GDA statistics, retuning, no text."""

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from tipretrieval.cache.cache import Cache
from tipretrieval.cli import main
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.encode.text import TextClassifier
from tipretrieval.errors import BadInput
from tipretrieval.jobs.classify import ClassifyOptions, classify_store, read_output
from tipretrieval.method import gda
from tipretrieval.method.tune import search
from tipretrieval.store.store import Store


@pytest.fixture(scope="module")
def data():
    return make_dataset(8, 48, seed=21)


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    sizes = SplitSizes(train=8, val=6, test=8, query=1, views=3)
    return write_store(tmp_path_factory.mktemp("g") / "store", data, sizes)


def odd_extra(store, cache):
    """Every training row of an odd class that is not a key yet (with views)."""
    train = store.labelled(split="train", with_views=True)
    return train.take((train.labels % 2 == 1) & ~np.isin(train.row_ids, cache.row_ids))


def rebuild(store, cache, path):
    """A new store holding exactly the cache's shots as its train split, built with all."""
    rows = store.select(row_ids=cache.row_ids, with_views=True)
    fresh = Store.create(path, dim=store.dim, provenance=store.provenance, classes=store.classes)
    fresh.append(replace(rows, row_ids=None))
    return Cache.build(fresh, None, text=cache.text)


def balanced_dense(x, keys, labels, c, beta):
    """sum_j exp(-beta (1 - x . k_j)) per class, times n_bar / n_c, in float64."""
    counts = np.bincount(labels, minlength=c)
    w = counts.sum() / c / np.maximum(counts, 1)
    terms = np.exp(-beta * (1 - x.astype(np.float64) @ keys.astype(np.float64).T))
    return terms @ np.eye(c)[labels] * w


def test_grown_cache_scores_as_a_balanced_rebuild(store, data, tmp_path, caplog):
    cache = Cache.build(store, 2, text=data.text)
    assert cache.info.gda_fit == "views" and cache.info.weighting == "balanced"
    cache.set_params(1.3, 2.5)
    cache.save(tmp_path / "c")
    cache.add_shots(odd_extra(store, cache), store=store)
    cache.save()
    grown = Cache.load(tmp_path / "c")
    counts = grown.class_counts()
    assert counts[1::2].tolist() == [8] * 4 and counts[0::2].tolist() == [2] * 4
    fresh = rebuild(store, grown, tmp_path / "s2")
    fresh.set_params(1.3, 2.5)
    x = store.select(split="test").features
    for method in ("cache", "tip", "gda"):
        np.testing.assert_allclose(grown.logits(x, method=method),
                                   fresh.logits(x, method=method), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grown.logits(x, method=method, mode="retrieval", k=4),
                                   fresh.logits(x, method=method, mode="retrieval", k=4),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grown.logits(x, method="cache"),
                               1.3 * balanced_dense(x, grown.keys, grown.labels, 8, 2.5),
                               rtol=1e-4)
    views = store.select(row_ids=grown.row_ids, with_views=True)
    order = np.argsort(views.row_ids)
    lab = grown.labels[np.argsort(grown.row_ids)]
    v = views.views[order]
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    refit = gda.GDAStats.fit(v.reshape(-1, v.shape[-1]), np.repeat(lab, v.shape[1]), 8).model()
    got = grown.state.gda.model()
    np.testing.assert_allclose(got.weights, refit.weights, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.bias, refit.bias, rtol=1e-5, atol=1e-5)
    with caplog.at_level(logging.WARNING):
        classify_store(tmp_path / "c", store.path, tmp_path / "p",
                       ClassifyOptions(split="test", method="cache", top_k=1),
                       show_progress=False)
    assert "tuned for an earlier generation" not in caplog.text  # set by hand, never tuned
    got = read_output(tmp_path / "p")
    order = np.argsort(got.row_ids)
    test = store.select(split="test")
    want = fresh.logits(test.features, method="cache").argmax(1)[np.argsort(test.row_ids)]
    np.testing.assert_array_equal(got.classes[order, 0], want)
    literal = Cache.load(tmp_path / "c")
    literal.set_weighting("sum")
    assert np.mean(literal.logits(x, method="cache").argmax(1) % 2 == 1) > \
        np.mean(grown.logits(x, method="cache").argmax(1) % 2 == 1)  # sum favours big classes
    with pytest.raises(BadInput, match="unknown weighting"):
        literal.set_weighting("mean")


def test_remove_shots_updates_gda_and_keys_fit_without_views(store, data, tmp_path):
    cache = Cache.build(store, 4, text=data.text)
    gone = cache.row_ids[cache.labels == 3][:3]
    cache.remove_shots(gone, store=store)
    fresh = rebuild(store, cache, tmp_path / "s3")
    x = store.select(split="test").features
    np.testing.assert_allclose(cache.logits(x, method="gda"), fresh.logits(x, method="gda"),
                               rtol=1e-5, atol=1e-5)
    bare = store.labelled(split="val")  # no views: a views fit falls back to a keys refit
    cache.add_shots(bare.take(np.arange(3)), store=store)
    assert cache.info.gda_fit == "keys"
    want = gda.GDAStats.fit(cache.keys, cache.labels, 8).model()
    np.testing.assert_allclose(cache.state.gda.model().weights, want.weights, rtol=1e-5,
                               atol=1e-5)


def test_stale_tuning_and_retune(store, data, tmp_path, caplog):
    cache = Cache.build(store, 2, text=data.text)
    cache.tune(cache.rows_of(store, "val"), steps=(20, 10), source=(str(store.path), "val"))
    assert cache.stale_tuning() is None and cache.info.tune_source["split"] == "val"
    cache.add_shots(odd_extra(store, cache), store=store)
    assert "tuned for an earlier generation" in cache.stale_tuning()
    assert cache.stale_tuning().endswith("tune again with `Cache.retune()`")
    with caplog.at_level(logging.WARNING):
        cache.save(tmp_path / "stale")
        classify_store(tmp_path / "stale", store.path, tmp_path / "p",
                       ClassifyOptions(split="test", top_k=1), show_progress=False)
    assert "tuned for an earlier generation" in caplog.text
    got = cache.retune()
    want = search(*(lambda r: (r.features, r.labels))(cache.rows_of(store, "val")), cache.keys,
                  cache.labels, cache.text, steps=(20, 10), show_progress=False)
    assert (cache.alpha, cache.beta, got.val_acc) == (want.alpha, want.beta, want.val_acc)
    assert cache.stale_tuning() is None
    with pytest.raises(BadInput, match="never tuned"):
        Cache.build(store, 2, text=data.text).retune()


def test_stale_tuning_counts_every_add_and_remove(store, data):
    cache = Cache.build(store, 2, text=data.text)
    cache.tune(cache.rows_of(store, "val"), steps=(4, 2))
    cache.add_shots(odd_extra(store, cache), store=store)
    assert "(1 add/remove-shots since)" in cache.stale_tuning()
    cache.remove_shots(cache.row_ids[:2], store=store)
    assert "(2 add/remove-shots since)" in cache.stale_tuning()


def run(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    return result


def test_cli_grow_warn_retune_and_weighting(store, data, tmp_path):
    TextClassifier(data.text, data.classes, "synthetic", store.provenance).save(tmp_path / "t.npz")
    c = tmp_path / "c"
    out = run("build", store.path, "--shots", 2, "--text", tmp_path / "t.npz", "--out", c).stdout
    assert "min / median / max: 2 / 2 / 2" in out and "GDA fitted on views" in out
    tuned = run("tune", c, "--val", store.path, "--steps", 20, 10)
    assert "gda: alpha" in tuned.stdout
    ids = odd_extra(store, Cache.load(c)).ids.tolist()
    grown = run("add-shots", c, "--ids", ",".join(ids))
    assert "min / median / max: 2 / 5 / 8" in grown.stdout
    assert grown.stderr.count("\n") == 1 and "warning: alpha/beta were tuned" in grown.stderr
    assert "warning: alpha/beta were tuned" in run("eval", c, "--store", store.path).stderr
    retuned = run("remove-shots", c, "--ids", ids[0], "--retune")
    assert "alpha" in retuned.stdout and "warning: alpha/beta" not in retuned.stderr
    cache = Cache.load(c)
    want = search(*(lambda r: (r.features, r.labels))(cache.rows_of(store, "val")), cache.keys,
                  cache.labels, cache.text, steps=(20, 10), show_progress=False)
    assert (cache.alpha, cache.beta) == (want.alpha, want.beta)
    assert json.loads((c / "cache.json").read_text())["weighting"] == "balanced"
    run("add-shots", c, "--ids", ids[0], "--val", store.path, code=2)
    s = tmp_path / "sum"
    run("build", store.path, "--shots", 2, "--text", tmp_path / "t.npz", "--out", s,
        "--weighting", "sum")
    assert Cache.load(s).info.weighting == "sum"


def test_cache_without_text(store, tmp_path):
    c = tmp_path / "bare"
    out = run("build", store.path, "--shots", 3, "--out", c).stdout
    assert "methods: cache, gda (no text classifier)" in out
    tuned = run("tune", c, "--val", store.path, "--steps", 30, 10).stdout
    assert "no text classifier: alpha does not change" in tuned
    cache = Cache.load(c)
    val = cache.rows_of(store, "val")
    want = search(val.features, val.labels, cache.keys, cache.labels, None, num_classes=8,
                  steps=(30, 10), show_progress=False)
    assert (cache.alpha, cache.beta) == (1.0, want.beta)
    report = run("eval", c, "--store", store.path, "--methods", "cache,gda,tip").stdout
    assert "cache has no text classifier: use cache or gda" in report
    for method in ("zero-shot", "tip"):
        res = run("classify", c, "--store", store.path, "--out", tmp_path / method,
                  "--method", method, code=2)
        assert res.stderr.count("\n") == 1 and "no text classifier" in res.stderr
        assert not (tmp_path / method).exists()
    run("classify", c, "--store", store.path, "--out", tmp_path / "g", "--method", "gda",
        "--quiet")


def test_import_integer_labels_into_a_new_store_names_the_classes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16)).astype(np.float32)
    np.savez(tmp_path / "f.npz", features=x, labels=np.array([0, 2, 2, 4, -1, 1]))
    run("import", tmp_path / "f.npz", "--store", tmp_path / "s")
    assert Store.open(tmp_path / "s").classes == ["0", "1", "2", "3", "4"]


def test_gda_statistics_file_is_checksummed(store, data, tmp_path):
    from tipretrieval.errors import CorruptData

    Cache.build(store, 2, text=data.text).save(tmp_path / "c")
    files = json.loads((tmp_path / "c" / "cache.json").read_text())["files"]
    path = tmp_path / "c" / files["gda"]
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptData, match=f"damaged {files['gda']}"):
        Cache.load(tmp_path / "c")


def test_shot_views_come_from_the_store_given_when_the_cache_store_moved(store, data, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(store.path, home)
    cache = Cache.build(Store.open(home), 2, text=data.text)
    assert cache.info.gda_fit == "views"
    there = Store.open(shutil.move(home, tmp_path / "moved"))  # the recorded path is gone
    cache.add_shots(odd_extra(there, cache), store=there)
    cache.remove_shots(cache.row_ids[:3], store=there)
    assert cache.info.gda_fit == "views"  # both read the shots' views from `there`
    fresh = rebuild(there, cache, tmp_path / "fresh")
    x = there.select(split="test").features
    np.testing.assert_allclose(cache.logits(x, method="gda"), fresh.logits(x, method="gda"),
                               rtol=1e-5, atol=1e-5)


def test_removing_shots_whose_views_are_gone_refits_gda_on_the_keys_and_says_so(
        store, data, tmp_path, caplog):
    """The cache's store (with the shots' views) is gone: removing shots refits GDA on the
    remaining keys and records the fit as "keys", so later shots are added as keys too."""
    copy = tmp_path / "store"
    shutil.copytree(store.path, copy)
    cache = Cache.build(Store.open(copy), 4, text=data.text)
    assert cache.info.gda_fit == "views"
    cache.save(tmp_path / "c")
    shutil.rmtree(copy)
    gone = cache.row_ids[cache.labels == 5][:2]
    with caplog.at_level(logging.WARNING):
        assert cache.remove_shots(gone) == 2
    assert "no stored views" in caplog.text
    assert cache.info.gda_fit == "keys" and not np.isin(gone, cache.row_ids).any()
    cache.save()
    cache = Cache.load(tmp_path / "c")
    assert cache.info.gda_fit == "keys"
    cache.add_shots(odd_extra(store, cache), store=store)  # these have views: keys all the same
    keys, labels = cache.keys.astype(np.float64), cache.labels
    sums = np.stack([keys[labels == c].sum(axis=0) for c in range(8)])
    np.testing.assert_allclose(cache.state.gda.sums, sums, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(cache.state.gda.counts, np.bincount(labels, minlength=8))
    np.testing.assert_allclose(cache.state.gda.scatter, keys.T @ keys, rtol=1e-6, atol=1e-6)
