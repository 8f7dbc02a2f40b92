"""The synthetic generator: CLIP-like geometry, reproducibility, and Tip-Adapter behaviour.

Accuracies are computed here with plain numpy, independently of the package's adapter code.
"""

import numpy as np
import pytest

from tipretrieval.demo.synthetic import SplitSizes, make_dataset, random_keys, write_store
from tipretrieval.errors import BadInput

SHOTS = (1, 2, 4, 8, 16)


@pytest.fixture(scope="module")
def data():
    ds = make_dataset(100, 512, seed=0)
    return ds, ds.split("train", 16, views=10), ds.split("test", 30)


def tip_accuracy(ds, keys, key_labels, x, y, alpha, beta):
    """Top-1 % of 100 x W^T + alpha * sum over class keys of exp(-beta (1 - x.k))."""
    onehot = np.eye(ds.num_classes, dtype=np.float64)[key_labels]
    x = x.astype(np.float64)
    logits = 100 * x @ ds.text.T.astype(np.float64)
    logits += alpha * np.exp(-beta * (1 - x @ keys.T.astype(np.float64))) @ onehot
    return 100 * float(np.mean(logits.argmax(1) == y))


def first_shots(train, shots):
    idx = np.concatenate([np.flatnonzero(train.labels == c)[:shots]
                          for c in range(train.labels.max() + 1)])
    return train.features[idx], train.labels[idx]


def test_unit_norms_shapes_and_views(data):
    ds, train, test = data
    assert ds.text.shape == (100, 512) and ds.text.dtype == np.float32
    assert train.views.shape == (1600, 10, 512) and train.features.dtype == np.float32
    for a in (ds.text, train.features, test.features, train.views.reshape(-1, 512)):
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    mean = train.views.astype(np.float64).mean(axis=1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(train.features, mean, atol=1e-5)
    assert np.bincount(test.labels).tolist() == [30] * 100
    assert train.ids[0] == "train/000000" and set(train.splits) == {"train"}
    assert test.views is None


def test_seed_reproducibility():
    a = make_dataset(20, 64, seed=3).split("val", 4)
    b = make_dataset(20, 64, seed=3).split("val", 4)
    c = make_dataset(20, 64, seed=4).split("val", 4)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.allclose(a.features, c.features)
    other = make_dataset(20, 64, seed=3).split("test", 4)
    assert not np.allclose(a.features, other.features)


def test_clip_like_geometry(data):
    ds, _, test = data
    x, y = test.features[:600], test.labels[:600]
    sims = x @ x.T
    upper = np.triu_indices(len(x), 1)
    assert 0.5 <= np.median(sims[upper]) <= 0.8
    same = (y[:, None] == y[None, :])[upper]
    assert np.median(sims[upper][same]) > np.median(sims[upper][~same]) + 0.1
    assert 0.3 <= np.median(np.sum(x * ds.centres[y], axis=1)) <= 0.5
    zs = x @ ds.text.T
    assert 0.2 <= np.median(zs[np.arange(len(y)), y]) <= 0.35
    assert np.median(zs) < np.median(zs[np.arange(len(y)), y]) - 0.05
    group_mates = ds.groups[:, None] == ds.groups[None, :]
    centre_sims = ds.centres @ ds.centres.T
    off_diagonal = ~np.eye(ds.num_classes, dtype=bool)
    assert centre_sims[group_mates & off_diagonal].min() > centre_sims[~group_mates].max()


def test_tip_adapter_behaviour(data):
    ds, train, test = data
    zero_shot = 100 * float(np.mean((test.features @ ds.text.T).argmax(1) == test.labels))
    assert 50 <= zero_shot <= 70
    for beta in (1.0, 5.5):
        accs = [tip_accuracy(ds, *first_shots(train, k), test.features, test.labels, 1.0, beta)
                for k in SHOTS]
        assert all(b > a for a, b in zip(accs, accs[1:], strict=False)), (beta, accs)
        assert accs[-1] >= zero_shot + 3, (beta, zero_shot, accs)


def test_random_keys_clustered_and_streams():
    keys, labels = random_keys(20000, 64, 50, seed=1)
    assert keys.shape == (20000, 64) and keys.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, atol=1e-5)
    assert np.bincount(labels).tolist() == [400] * 50
    again, _ = random_keys(20000, 64, 50, seed=1)
    np.testing.assert_array_equal(keys, again)
    queries, qlabels = random_keys(2000, 64, 50, seed=1, stream=1)
    assert not np.allclose(queries, keys[:2000])
    means = np.stack([keys[labels == c].mean(0) for c in range(50)])
    assert np.mean((queries @ means.T).argmax(1) == qlabels) > 0.5


def test_bad_arguments():
    with pytest.raises(BadInput):
        make_dataset(1, 512)
    with pytest.raises(BadInput):
        make_dataset(10, 64).split("train", 0)


def test_write_store(tmp_path):
    pytest.importorskip("tipretrieval.store.store")
    ds = make_dataset(10, 32, seed=2)
    store = write_store(tmp_path / "s", ds, SplitSizes(train=3, val=2, test=2, query=1, views=2),
                        dtype="float32")
    assert store.classes == ds.classes and store.dim == 32
    assert store.class_counts("train") == {name: 3 for name in ds.classes}
    train = store.labelled("train", with_views=True)
    expected = ds.split("train", 3, views=2)
    order = np.argsort(train.ids)
    np.testing.assert_array_equal(train.ids[order], expected.ids)
    np.testing.assert_allclose(train.features[order], expected.features, atol=1e-6)
    np.testing.assert_allclose(train.views[order], expected.views, atol=1e-6)
    query = store.select(split="query")
    assert len(query) == 10 and (query.labels == -1).all()
