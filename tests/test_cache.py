"""Cache: shot sampling, build from a store, persistence and generations, tune, eval."""

import json
import logging
import pickle

import numpy as np
import pytest
from filelock import FileLock

from tipretrieval.cache import files as cache_files
from tipretrieval.cache.cache import Cache, sample_shots
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.encode.text import TextClassifier
from tipretrieval.errors import (
    BadInput,
    ConcurrentChange,
    CorruptData,
    NewerFormat,
    StoreLocked,
)
from tipretrieval.jobs.evaluate import evaluate
from tipretrieval.method.tune import search
from tipretrieval.provenance import Provenance
from tipretrieval.store.store import Store


@pytest.fixture(scope="module")
def data():
    return make_dataset(10, 64, seed=3)


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    sizes = SplitSizes(train=8, val=6, test=8, query=2, views=3)
    return write_store(tmp_path_factory.mktemp("s") / "store", data, sizes)


def dense_logits(x, keys, labels, text, alpha, beta):
    """Independent dense Tip-Adapter logits in float64."""
    x, keys, text = (a.astype(np.float64) for a in (x, keys, text))
    onehot = np.eye(text.shape[0])[labels]
    return 100 * x @ text.T + alpha * np.exp(-beta * (1 - x @ keys.T)) @ onehot


def test_sample_shots_counts_seed_and_order(caplog):
    labels = np.repeat(np.arange(4), [10, 2, 5, 7])
    row_ids = np.arange(len(labels)) * 3 + 100
    with caplog.at_level(logging.WARNING):
        picked = sample_shots(labels, row_ids, 4, 5, seed=1)
    assert np.bincount(labels[picked], minlength=4).tolist() == [5, 2, 5, 5]
    assert "fewer than 5" in caplog.text
    assert (picked == sample_shots(labels, row_ids, 4, 5, seed=1)).all()
    assert not (picked == sample_shots(labels, row_ids, 4, 5, seed=2)).all()
    perm = np.random.default_rng(0).permutation(len(labels))  # row order does not matter
    again = sample_shots(labels[perm], row_ids[perm], 4, 5, seed=1)
    assert sorted(row_ids[perm][again]) == sorted(row_ids[picked])
    assert len(sample_shots(labels, row_ids, 4, None)) == len(labels)
    with pytest.raises(BadInput, match="positive"):
        sample_shots(labels, row_ids, 4, 0)


def test_build_takes_k_shots_with_store_features(store, data):
    cache = Cache.build(store, 3, text=data.text, seed=5)
    assert cache.class_counts().tolist() == [3] * 10
    train = store.labelled("train")
    pos = np.searchsorted(train.row_ids, cache.row_ids)
    assert (train.row_ids[pos] == cache.row_ids).all()
    assert (cache.keys == train.features[pos]).all() and (cache.labels == train.labels[pos]).all()
    assert cache.store_id == store.store_id and cache.store_generation == store.generation
    assert cache.provenance == store.provenance and cache.classes == store.classes
    assert (Cache.build(store, 3, text=data.text, seed=5).row_ids == cache.row_ids).all()
    assert len(Cache.build(store, None, text=data.text)) == 80


def test_build_refuses_bad_input(store, data, tmp_path):
    with pytest.raises(BadInput, match="positive"):
        Cache.build(store, 0, text=data.text)
    with pytest.raises(BadInput, match="no labelled rows in split 'nope'"):
        Cache.build(store, 2, text=data.text, split="nope")
    bare = Cache.build(store, 2)  # no text classifier: methods cache and gda only
    assert bare.text is None and bare.info.gda_fit == "views"
    with pytest.raises(BadInput, match="no text classifier"):
        bare.logits(store.labelled("test").features[:3], method="tip")
    other = Provenance("ViT-B-32", "openai", 64)
    TextClassifier(data.text, data.classes, "x", other).save(tmp_path / "other.npz")
    with pytest.raises(BadInput, match="encoder"):
        Cache.build(store, 2, text=tmp_path / "other.npz")


def test_text_file_rows_follow_class_names(store, data, tmp_path):
    perm = np.random.default_rng(1).permutation(10)
    shuffled = TextClassifier(data.text[perm], [data.classes[i] for i in perm], "mine",
                              store.provenance)
    shuffled.save(tmp_path / "t.npz")
    cache = Cache.build(store, 2, text=tmp_path / "t.npz")
    assert np.array_equal(cache.text, data.text)
    assert cache.info.templates == "mine"


def test_save_load_round_trip(store, data, tmp_path):
    cache = Cache.build(store, 4, text=data.text, index_spec="Flat")
    cache.set_params(1.7, 3.2)
    cache.save(tmp_path / "c")
    loaded = Cache.load(tmp_path / "c")
    assert loaded.generation == 1 and loaded.info == cache.info
    for name in ("keys", "labels", "row_ids", "text"):
        assert np.array_equal(getattr(loaded, name), getattr(cache, name))
    meta = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert meta["alpha"] == 1.7 and meta["store_id"] == store.store_id and meta["shots"] == 4
    x = store.select(split="test").features
    expected = dense_logits(x, cache.keys, cache.labels, data.text, 1.7, 3.2)
    assert np.allclose(loaded.logits(x), expected, rtol=1e-4, atol=1e-3)
    assert sorted(loaded.index.ids()) == sorted(cache.row_ids)
    with pytest.raises(BadInput, match="not a cache"):
        Cache.load(tmp_path / "nothing")


def test_reader_keeps_its_generation_and_old_files_go(store, data, tmp_path):
    writer = Cache.build(store, 2, text=data.text)
    writer.save(tmp_path / "c")
    reader = Cache.load(tmp_path / "c")
    x = store.select(split="test").features
    before = reader.logits(x, mode="retrieval", k=5)
    g1_files = set(json.loads((tmp_path / "c" / "cache.json").read_text())["files"]["segments"])
    extra = store.labelled("train")
    extra = extra.take(~np.isin(extra.row_ids, writer.row_ids))
    for gen in (2, 3):
        writer.add_shots(extra.take(slice(10 * gen, 10 * gen + 10)))
        writer.set_params(2.0 * gen, 1.0)
        writer.save()
        assert Cache.load(tmp_path / "c").generation == gen
    assert np.array_equal(reader.logits(x, mode="retrieval", k=5), before)
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert not g1_files & names  # generation 1 was merged away and its files deleted
    with pytest.raises(ConcurrentChange, match="changed since it was loaded"):
        reader.save()
    assert Cache.load(tmp_path / "c").alpha == 6.0


def test_tune_adopts_the_official_search(store, data, tmp_path):
    cache = Cache.build(store, 4, text=data.text)
    val = cache.rows_of(store, "val")
    result = cache.tune(val, steps=(20, 10))
    expected = search(val.features, val.labels, cache.keys, cache.labels, data.text,
                      steps=(20, 10), show_progress=False)
    assert (cache.alpha, cache.beta) == (expected.alpha, expected.beta) == (result.alpha,
                                                                            result.beta)
    cache.save(tmp_path / "c")
    assert Cache.load(tmp_path / "c").beta == expected.beta


def test_eval_matches_numpy(store, data):
    cache = Cache.build(store, 4, text=data.text)
    cache.set_params(2.5, 4.0)
    report = evaluate(cache, store, split="test", methods=["zero-shot", "cache", "tip", "tip-f"])
    test = store.labelled("test")
    tip = dense_logits(test.features, cache.keys, cache.labels, data.text, 2.5, 4.0)
    zs = 100 * test.features.astype(np.float64) @ data.text.T.astype(np.float64)
    for score, logits in zip(report.scores, (zs, tip - zs, tip), strict=False):
        top5 = np.argsort(-logits, axis=1)[:, :5]
        assert score.top1 == pytest.approx(100 * np.mean(logits.argmax(1) == test.labels))
        assert score.top5 == pytest.approx(100 * np.mean((top5 == test.labels[:, None]).any(1)))
    assert report.rows == len(test)
    assert report.scores[3].top1 is None and "not fine-tuned" in report.scores[3].note
    retrieval = evaluate(cache, store, methods=["tip"], mode="retrieval", k=1000)
    assert retrieval.scores[0].top1 == report.scores[2].top1


def test_finetune_keeps_training_free_view(store, data, tmp_path):
    cache = Cache.build(store, 4, text=data.text)
    cache.tune(cache.rows_of(store, "val"), steps=(10, 5))
    plain = evaluate(cache, store, methods=["tip"]).scores[0]
    start_keys = cache.keys.copy()
    result = cache.finetune(store, cache.rows_of(store, "val"), epochs=2, steps=(10, 5))
    assert cache.method == "tip-f" and not np.array_equal(cache.keys, start_keys)
    assert (cache.alpha, cache.beta) == (result.tuned.alpha, result.tuned.beta)
    cache.save(tmp_path / "c")
    report = evaluate(Cache.load(tmp_path / "c"), store, methods=["tip", "tip-f"])
    assert report.scores[0] == plain and report.scores[1].top1 is not None


def test_finetune_needs_views(data, tmp_path):
    plain = Store.create(tmp_path / "s", dim=64, provenance=data.provenance(),
                         classes=data.classes)
    plain.append(data.split("train", 3))
    plain = plain.refresh()
    cache = Cache.build(plain, 2, text=data.text)
    with pytest.raises(BadInput, match="no stored augmented views"):
        cache.finetune(plain, cache.rows_of(plain, "train"), epochs=1)


def test_pickled_cache_reloads_its_index(store, data, tmp_path):
    cache = Cache.build(store, 3, text=data.text)
    cache.save(tmp_path / "c")
    loaded = Cache.load(tmp_path / "c")
    x = store.select(split="test").features
    expected = loaded.logits(x, mode="retrieval", k=4)  # loads the FAISS index
    copy = pickle.loads(pickle.dumps(loaded))
    assert np.array_equal(copy.logits(x, mode="retrieval", k=4), expected)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_cache_files_are_one_line_corrupt_data(store, data, tmp_path, damage):
    Cache.build(store, 2, text=data.text).save(tmp_path / "c")
    segment = next((tmp_path / "c").glob("keys-g1-*.npz"))
    if damage == "truncate":
        segment.write_bytes(segment.read_bytes()[:100])
    else:
        segment.unlink()
    with pytest.raises(CorruptData, match=f"cache {tmp_path / 'c'}.*rebuild the cache"):
        Cache.load(tmp_path / "c")


def test_changes_never_touch_an_earlier_state(store, data, tmp_path):
    cache = Cache.build(store, 3, text=data.text)
    cache.set_params(1.5, 2.0, {"job": "tune"})
    first = cache.state
    cache.set_params(2.5, 3.0, {"job": "again"})
    cache.add_shots(store.labelled("train").take(~np.isin(store.labelled("train").row_ids,
                                                           cache.row_ids)).take(slice(0, 2)))
    cache.remove_shots(cache.row_ids[:1])
    assert [r["job"] for r in first.info.history] == ["tune"]
    assert first.info.alpha == 1.5 and len(first.keys) == 30
    assert [r["job"] for r in cache.info.history] == ["tune", "again"] and len(cache) == 31


def test_cache_lock_times_out_with_one_line_error(store, data, tmp_path):
    Cache.build(store, 2, text=data.text).save(tmp_path / "c")
    with FileLock(str(tmp_path / "c" / cache_files.LOCK_NAME)):
        with pytest.raises(StoreLocked, match="locked by another writer for over 0.2 s"):
            with cache_files.lock(tmp_path / "c", timeout=0.2):
                pass


def test_cache_json_version_policy(store, data, tmp_path):
    Cache.build(store, 2, text=data.text).save(tmp_path / "c")
    meta_file = tmp_path / "c" / "cache.json"
    meta = json.loads(meta_file.read_text())
    assert (meta["format"], meta["version"]) == ("tipretrieval-cache", 2)
    meta_file.write_text(json.dumps({**meta, "from_a_later_release": 1}))
    assert len(Cache.load(tmp_path / "c")) == 20  # unknown keys are ignored
    files = {k: v for k, v in meta["files"].items() if k != "sha256"}
    meta_file.write_text(json.dumps({**meta, "version": 1, "files": files}))
    assert len(Cache.load(tmp_path / "c")) == 20  # version 1: no checksums, read unchecked
    meta_file.write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(NewerFormat, match=r"newer tipretrieval \(cache v3; this one reads up "
                                          r"to v2\): upgrade tipretrieval"):
        Cache.load(tmp_path / "c")
    meta_file.write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(BadInput, match="is not a cache"):
        Cache.load(tmp_path / "c")
