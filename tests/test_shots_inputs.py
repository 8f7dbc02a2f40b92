"""add_shots / remove_shots refuse bad shots naming the problem and change nothing."""

from dataclasses import replace

import numpy as np
import pytest

from tipretrieval.cache.cache import Cache
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.errors import BadInput


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = make_dataset(4, 16, seed=9)
    store = write_store(tmp_path_factory.mktemp("s") / "store", data,
                        SplitSizes(train=5, val=1, test=2, query=1, views=0))
    train = store.labelled("train")
    return data, store, train


def fresh(setup):
    data, store, train = setup
    cache = Cache.build(store, 2, text=data.text)
    spare = train.take(~np.isin(train.row_ids, cache.row_ids))
    return cache, spare, store.select(split="test").features


@pytest.mark.parametrize("spoil, classes, message", [
    (lambda r: r, ["a", "b", "c", "d"], "does not extend this cache's classes"),
    (lambda r: replace(r, row_ids=None), None, "need store row ids"),
    (lambda r: r.take(slice(0, 0)), None, "no shots to add"),
    (lambda r: replace(r, labels=np.where(np.arange(len(r)) == 1, -1, r.labels)), None,
     "label of a known class"),
    (lambda r: replace(r, labels=np.where(np.arange(len(r)) == 1, 4, r.labels)), None,
     "label of a known class"),
    (lambda r: replace(r, features=r.features[:, :8]), None, "shots have dim 8, the cache 16"),
    (lambda r: replace(r, row_ids=np.r_[r.row_ids[:-1], r.row_ids[0]]), None, "or repeated"),
])
def test_bad_shots_are_refused_and_change_nothing(setup, spoil, classes, message):
    cache, spare, x = fresh(setup)
    before, n = cache.logits(x), len(cache)
    with pytest.raises(BadInput, match=message):
        cache.add_shots(spoil(spare.take(slice(0, 4))), classes=classes)
    assert len(cache) == n and cache.num_classes == 4
    np.testing.assert_array_equal(cache.logits(x), before)


def test_shots_already_in_the_cache_are_refused_by_row_id(setup):
    cache, spare, _ = fresh(setup)
    _, _, train = setup
    keys = train.take(np.isin(train.row_ids, cache.row_ids[[1, 3]]))
    with pytest.raises(BadInput, match=rf"row ids \[{keys.row_ids[0]}, {keys.row_ids[1]}\]"):
        cache.add_shots(keys)


def test_the_refusal_names_only_the_clashing_or_the_repeated_row_ids(setup):
    cache, spare, _ = fresh(setup)
    _, _, train = setup
    key = cache.row_ids[2]
    mixed = train.take(np.isin(train.row_ids, np.r_[spare.row_ids[:3], key]))
    with pytest.raises(BadInput, match=rf"row ids \[{key}\] are already keys"):
        cache.add_shots(mixed)
    twice = spare.take(slice(0, 3))
    again = int(twice.row_ids[0])
    twice = replace(twice, row_ids=np.r_[twice.row_ids[:2], again])
    with pytest.raises(BadInput, match=rf"row ids \[[^]]*\b{again}\b[^]]*\] .*or repeated"):
        cache.add_shots(twice)


def test_remove_counts_each_row_once_and_refuses_unknown_ids(setup):
    cache, _, x = fresh(setup)
    ids = cache.row_ids.copy()
    before = cache.logits(x)
    with pytest.raises(BadInput, match=r"row ids \[999999\] are not keys"):
        cache.remove_shots([ids[0], 999999])
    assert len(cache) == 8
    np.testing.assert_array_equal(cache.logits(x), before)
    assert cache.remove_shots([ids[0], ids[0], ids[5]]) == 2
    assert sorted(cache.row_ids) == sorted(np.delete(ids, [0, 5]))

