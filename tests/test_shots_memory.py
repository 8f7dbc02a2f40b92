"""add_shots / remove_shots on a live cache (adapter and index already built) equal a rebuild,
with no save or load in between."""

import numpy as np
import pytest

from tipretrieval.cache.cache import Cache
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.rows import Rows


@pytest.fixture(scope="module")
def data():
    return make_dataset(10, 48, seed=8)


@pytest.fixture()
def store(data, tmp_path):
    return write_store(tmp_path / "store", data, SplitSizes(train=8, val=1, test=4, query=1,
                                                            views=0))


def rebuild(cache: Cache, store) -> Cache:
    """A cache built from scratch from exactly the cache's shots (looked up by row id)."""
    train = store.labelled("train")
    return Cache.from_rows(train.take(np.isin(train.row_ids, cache.row_ids)), cache.classes,
                           cache.provenance, text=cache.text, alpha=cache.alpha, beta=cache.beta)


def assert_like_rebuild(cache: Cache, store, x: np.ndarray) -> None:
    ref = rebuild(cache, store)
    assert len(cache) == len(ref) and sorted(cache.row_ids) == sorted(ref.row_ids)
    assert np.array_equal(cache.class_counts(), ref.class_counts())
    np.testing.assert_allclose(cache.logits(x), ref.logits(x), rtol=1e-5, atol=1e-4)
    for method in ("cache", "tip"):
        np.testing.assert_allclose(cache.logits(x, method=method, mode="retrieval", k=6),
                                   ref.logits(x, method=method, mode="retrieval", k=6),
                                   rtol=1e-5, atol=1e-4)
    assert sorted(cache.index.ids()) == sorted(ref.row_ids)


def test_adds_and_removes_in_memory_equal_a_rebuild(store, data):
    x = store.select(split="test").features
    cache = Cache.build(store, 3, text=data.text)
    cache.set_params(2.5, 6.0)
    before = cache.logits(x)
    cache.logits(x, mode="retrieval", k=6)  # the adapter and the index now exist
    train = store.labelled("train")
    spare = train.take(~np.isin(train.row_ids, cache.row_ids))
    cache.add_shots(spare.take(slice(0, 17)), store_generation=store.generation + 1)
    assert cache.store_generation == store.generation + 1
    assert len(cache) == 47 and not np.allclose(cache.logits(x), before)
    assert_like_rebuild(cache, store, x)
    gone = cache.row_ids[[0, 5, 31, 46]]
    assert cache.remove_shots(gone) == 4
    assert not np.isin(gone, cache.row_ids).any() and len(cache) == 43
    assert_like_rebuild(cache, store, x)
    cache.add_shots(spare.take(slice(17, 20)))
    assert_like_rebuild(cache, store, x)


def test_a_new_class_added_in_memory_scores_like_a_rebuild(store, data):
    x = store.select(split="test").features
    cache = Cache.build(store, 3, text=data.text)
    cache.set_params(1.5, 4.0)
    cache.logits(x, mode="retrieval", k=6)
    other = make_dataset(2, 48, seed=98)
    (new_index,) = store.add_classes(["zebra"])
    drawn = other.split("train", 4)
    store.append(Rows.make([f"zebra/{i}" for i in range(4)], drawn.features[drawn.labels == 0],
                           np.full(4, new_index), splits="train"))
    store = store.refresh()
    cache.add_shots(store.select(ids=[f"zebra/{i}" for i in range(4)]), classes=store.classes,
                    text=other.text[:1])
    assert cache.classes[-1] == "zebra" and cache.num_classes == 11
    assert cache.logits(x).shape == (len(x), 11)
    zebra = drawn.features[drawn.labels == 0]
    assert (cache.logits(zebra).argmax(1) == 10).all()
    assert_like_rebuild(cache, store, np.concatenate([x, zebra]))


def test_a_live_index_is_updated_in_place_not_rebuilt(store, data):
    cache = Cache.build(store, 3, text=data.text)
    index = cache.index
    train = store.labelled("train")
    spare = train.take(~np.isin(train.row_ids, cache.row_ids))
    cache.add_shots(spare.take(slice(0, 5)))
    assert cache.index is index and index.ntotal == 35
    cache.remove_shots(cache.row_ids[:4])
    assert cache.index is index and index.ntotal == 31
    assert sorted(index.ids()) == sorted(cache.row_ids)
