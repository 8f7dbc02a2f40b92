"""Incremental shots: adds and removes equal a rebuild; new classes extend text and values."""

import json

import numpy as np
import pytest

from tipretrieval.cache.cache import Cache
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.encode import load_templates, text_classifier
from tipretrieval.errors import BadInput
from tipretrieval.rows import Rows
from tipretrieval.store.store import Store


@pytest.fixture(scope="module")
def data():
    return make_dataset(10, 64, seed=7)


@pytest.fixture()
def store(data, tmp_path):
    return write_store(tmp_path / "store", data, SplitSizes(train=8, val=2, test=6, query=1,
                                                            views=2))


def rebuild(cache: Cache, store: Store) -> Cache:
    """A cache built from scratch from exactly the cache's shots."""
    train = store.labelled("train")
    return Cache.from_rows(train.take(np.isin(train.row_ids, cache.row_ids)), cache.classes,
                           cache.provenance, text=cache.text, alpha=cache.alpha, beta=cache.beta)


def assert_same_logits(cache: Cache, store: Store) -> None:
    x = store.select(split="test").features
    ref = rebuild(cache, store)
    assert sorted(cache.row_ids) == sorted(ref.row_ids)
    assert np.allclose(cache.logits(x), ref.logits(x), rtol=1e-5, atol=1e-5)
    exact = cache.logits(x)
    assert np.allclose(cache.logits(x, mode="retrieval", k=len(cache)), exact, rtol=1e-5,
                       atol=1e-4)


def spare_rows(cache: Cache, store: Store) -> Rows:
    train = store.labelled("train")
    return train.take(~np.isin(train.row_ids, cache.row_ids))


def test_adds_and_removes_equal_a_rebuild(store, data, tmp_path):
    cache = Cache.build(store, 4, text=data.text)
    cache.set_params(3.0, 5.5)
    cache.save(tmp_path / "c")
    spare = spare_rows(cache, store)
    cache.add_shots(spare.take(slice(0, 15)))
    cache.save()
    cache = Cache.load(tmp_path / "c")
    assert_same_logits(cache, store)
    cache.remove_shots(cache.row_ids[::7])
    cache.add_shots(spare.take(slice(15, 20)))
    cache.save()
    loaded = Cache.load(tmp_path / "c")
    assert loaded.generation == 3 and len(loaded) == len(cache)
    assert sorted(loaded.index.ids()) == sorted(loaded.row_ids)
    assert_same_logits(loaded, store)


def test_small_adds_append_segments_without_rewriting(store, data, tmp_path):
    cache = Cache.build(store, 6, text=data.text)
    cache.save(tmp_path / "c")
    spare = spare_rows(cache, store)
    for i in range(3):
        cache.add_shots(spare.take(slice(2 * i, 2 * i + 2)))
        cache.save()
    files = json.loads((tmp_path / "c" / "cache.json").read_text())["files"]
    assert len(files["segments"]) == 4 and files["index"] == "index-g1.faiss"
    assert files["index_segments"] == 1
    loaded = Cache.load(tmp_path / "c")
    assert len(loaded) == 66 and loaded.index.ntotal == 66
    assert_same_logits(loaded, store)


def test_refused_changes_leave_the_cache_alone(store, data, tmp_path):
    cache = Cache.build(store, 4, text=data.text)
    cache.save(tmp_path / "c")
    before = (tmp_path / "c" / "cache.json").read_text()
    train = store.labelled("train")
    with pytest.raises(BadInput, match="already keys"):
        cache.add_shots(train.take(np.isin(train.row_ids, cache.row_ids[:2])))
    with pytest.raises(BadInput, match="not keys of this cache"):
        cache.remove_shots([10**9])
    unlabelled = spare_rows(cache, store).take(slice(0, 2))
    unlabelled.labels[:] = -1
    with pytest.raises(BadInput, match="label"):
        cache.add_shots(unlabelled)
    assert len(cache) == 40
    assert (tmp_path / "c" / "cache.json").read_text() == before


def test_new_class_extends_vocabulary_text_and_values(store, data, tmp_path):
    cache = Cache.build(store, 4, text=data.text)
    cache.save(tmp_path / "c")
    other = make_dataset(3, 64, seed=99)
    new_index, _ = store.add_classes(["zebra", "yak"])  # no yak shots: the cache stops at zebra
    drawn = other.split("train", 5)
    rows = Rows.make([f"zebra/{i}" for i in range(5)], drawn.features[drawn.labels == 0],
                     np.full(5, new_index), splits="train")
    store.append(rows)
    store = store.refresh()
    new_rows = store.select(ids=[f"zebra/{i}" for i in range(5)])
    with pytest.raises(BadInput, match="`text=` FILE"):
        cache.add_shots(new_rows, classes=store.classes)
    assert cache.num_classes == 10
    cache.add_shots(new_rows, classes=store.classes, text=other.text[:1])
    cache.save()
    loaded = Cache.load(tmp_path / "c")
    assert loaded.classes == data.classes + ["zebra"]
    assert np.array_equal(loaded.text[10], other.text[0])
    assert loaded.class_counts()[10] == 5
    assert_same_logits(loaded, store)
    assert (loaded.logits(new_rows.features).argmax(1) == 10).mean() > 0.5


def test_new_class_text_encoded_with_cache_templates(tiny_encoder, tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((12, 32)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    store = Store.create(tmp_path / "s", dim=32, provenance=tiny_encoder.provenance,
                         classes=["cat", "dog"])
    store.append(Rows.make([f"r{i}" for i in range(12)], feats, np.arange(12) % 2))
    store = store.refresh()
    templates = load_templates("tip_imagenet")
    cache = Cache.build(store, 3, templates="tip_imagenet", encoder=tiny_encoder)
    assert np.allclose(cache.text, text_classifier(tiny_encoder, ["cat", "dog"], templates),
                       atol=1e-6)
    store.add_classes(["otter"])
    store.append(Rows.make(["o1"], feats[:1], [2]))
    store = store.refresh()
    with pytest.raises(BadInput, match="cannot be loaded by name"):
        cache.add_shots(store.select(ids=["o1"]), classes=store.classes)
    cache.add_shots(store.select(ids=["o1"]), classes=store.classes, encoder=tiny_encoder)
    assert np.allclose(cache.text[2], text_classifier(tiny_encoder, ["otter"], templates)[0],
                       atol=1e-6)
    assert cache.labels.max() == 2 and cache.classes == ["cat", "dog", "otter"]


def test_new_shots_and_key_row_ids_select_like_the_cli(store, data, tmp_path):
    cache = Cache.build(store, 4, text=data.text)
    cache.save(tmp_path / "c")
    train = store.labelled("train")
    spare = train.take(~np.isin(train.row_ids, cache.row_ids))
    picked = cache.new_shots(store, ids=spare.ids[:3].tolist())
    assert picked.ids.tolist() == spare.ids[:3].tolist()
    assert np.array_equal(picked.row_ids, spare.row_ids[:3])
    everything = cache.new_shots(store)  # no ids: every labelled train row not yet a key
    assert sorted(everything.row_ids) == sorted(spare.row_ids)
    with pytest.raises(BadInput, match=r"\['nope'\] are not labelled 'train' rows"):
        cache.new_shots(store, ids=["nope", spare.ids[0]])
    with pytest.raises(BadInput, match=r"are not labelled 'val' rows"):
        cache.new_shots(store, split="val", ids=[spare.ids[0]])
    assert np.array_equal(cache.key_row_ids(store, train.ids[:2].tolist()), train.row_ids[:2])
    with pytest.raises(BadInput, match="are not in store"):
        cache.key_row_ids(store, ["nope"])
    assert cache.open_store().store_id == store.store_id
    other = write_store(tmp_path / "other", data, SplitSizes(train=2, val=1, test=1, query=1))
    for call in (lambda: cache.open_store(tmp_path / "other"),
                 lambda: cache.new_shots(other), lambda: cache.key_row_ids(other, ["x"])):
        with pytest.raises(BadInput, match="not the store this cache was built from"):
            call()
    cache.add_shots(everything)
    with pytest.raises(BadInput, match="already a key"):
        cache.new_shots(store)
