"""The retrieval tail: m_c * exp(-beta (1 - mu_c)) against numpy, and exact when keys coincide."""

import numpy as np
import pytest

from tipretrieval.method import affinity
from tipretrieval.method.adapter import TipAdapter
from tipretrieval.method.index import KeyIndex


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def by_hand(x, keys, labels, c, beta, pos):
    """Per query and class, in float64 loops: (the retrieved keys' exact terms, the tail
    m_c * exp(-beta * (1 - mu_c)) of the m_c keys not retrieved, mu_c their mean similarity)."""
    x, keys = x.astype(np.float64), keys.astype(np.float64)
    retrieved, tail = np.zeros((len(x), c)), np.zeros((len(x), c))
    for b in range(len(x)):
        got = {int(p) for p in pos[b] if p >= 0}
        for cls in range(c):
            members = np.flatnonzero(labels == cls)
            sims = keys[members] @ x[b]
            hit = np.array([m in got for m in members], dtype=bool)
            retrieved[b, cls] = np.exp(-beta * (1 - sims[hit])).sum()
            m = int((~hit).sum())
            if m:
                tail[b, cls] = m * np.exp(-beta * (1 - sims[~hit].mean()))
    return retrieved, tail


@pytest.mark.parametrize("beta", [0.7, 6.0])
def test_tail_equals_the_mean_field_formula(beta):
    rng = np.random.default_rng(11)
    c, d = 5, 16
    counts = np.array([1, 4, 0, 7, 3])  # a single-key class, an empty class, unequal sizes
    labels = np.repeat(np.arange(c), counts)
    centres = unit(rng.standard_normal((c, d)))
    keys = unit(centres[labels] + 0.6 * rng.standard_normal((len(labels), d)))
    x = unit(rng.standard_normal((40, d)))
    sk = affinity.SortedKeys.build(keys, labels, c, "sum")  # sorted: positions are indices
    for k in (1, 3, 6):
        # each query retrieves k random keys; some fewer (-1 padding, as FAISS gives)
        pos = np.stack([rng.choice(len(keys), size=k, replace=False) for _ in x])
        pos[::4, -1] = -1
        sims = affinity.retrieved_sims(x, sk, pos)
        retrieved, tail = by_hand(x, keys, labels, c, beta, pos)
        np.testing.assert_allclose(affinity.retrieval(x, sk, beta, pos, sims),
                                   retrieved + tail, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(affinity.retrieval(x, sk, beta, pos, sims, tail=False),
                                   retrieved, rtol=2e-5, atol=1e-7)
        assert np.all(tail[:, 2] == 0) and np.all(tail[:, [0, 1, 3, 4]].max(axis=0) > 0)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_retrieval_is_exact_when_each_class_has_identical_keys(k):
    """With equal keys within a class the unretrieved similarities are all equal, so the
    mean-field tail is exact: retrieval without rescoring equals exact mode for any k."""
    rng = np.random.default_rng(12)
    c, d = 6, 24
    counts = np.array([3, 9, 1, 6, 12, 4])
    centres = unit(rng.standard_normal((c, d)))
    labels = rng.permutation(np.repeat(np.arange(c), counts))
    keys = centres[labels]
    text = unit(rng.standard_normal((c, d)))
    x = unit(centres[rng.integers(0, c, 60)] + 0.5 * rng.standard_normal((60, d)))
    for beta in (0.5, 7.0):
        ad = TipAdapter(keys, labels, c, text, alpha=2.5, beta=beta, weighting="sum",
                        row_ids=rng.permutation(500)[: len(keys)])
        exact = ad.cache_term(x)
        sims = x.astype(np.float64) @ centres.T.astype(np.float64)
        np.testing.assert_allclose(exact, counts * np.exp(-beta * (1 - sims)), rtol=1e-5)
        np.testing.assert_allclose(ad.cache_term(x, mode="retrieval", k=k), exact, rtol=1e-5)
        np.testing.assert_allclose(ad.logits(x, mode="retrieval", k=k, rescore=0),
                                   ad.logits(x), rtol=1e-5, atol=1e-4)
        trunc = ad.cache_term(x, mode="retrieval", k=k, tail=False)
        assert np.all(trunc <= exact * (1 + 1e-6)) and np.mean(trunc < 0.9 * exact) > 0.5


def test_rescoring_makes_exactly_the_top_estimated_classes_exact():
    rng = np.random.default_rng(13)
    c, d = 9, 16
    labels = rng.permutation(np.repeat(np.arange(c), rng.integers(3, 9, c)))
    centres = unit(rng.standard_normal((c, d)))
    keys = unit(centres[labels] + 0.7 * rng.standard_normal((len(labels), d)))
    x = unit(centres[rng.integers(0, c, 80)] + 0.7 * rng.standard_normal((80, d)))
    text = unit(rng.standard_normal((c, d)))
    ad = TipAdapter(keys, labels, c, text, alpha=2.0, beta=4.0)
    exact = ad.logits(x)
    estimate = ad.logits(x, mode="retrieval", k=3, rescore=0)
    for r in (1, 2, 3):
        got = ad.logits(x, mode="retrieval", k=3, rescore=r)
        top = np.argsort(-estimate, axis=1, kind="stable")[:, :r]
        chosen = np.zeros_like(got, dtype=bool)
        np.put_along_axis(chosen, top, True, axis=1)
        np.testing.assert_allclose(got[chosen], exact[chosen], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(got[~chosen], estimate[~chosen])
        assert np.mean(np.abs(estimate[chosen] - exact[chosen]) > 1e-3) > 0.3  # it mattered


def test_the_affinity_functions_take_float64_queries():
    rng = np.random.default_rng(14)
    labels = np.repeat(np.arange(4), 5)
    keys = unit(rng.standard_normal((20, 8)))
    x32 = unit(rng.standard_normal((6, 8)))
    x64 = x32.astype(np.float64)
    sk = affinity.SortedKeys.build(keys, labels, 4)
    np.testing.assert_array_equal(affinity.similarities(x64, sk), affinity.similarities(x32, sk))
    pos = np.stack([rng.choice(20, 4, replace=False) for _ in x32])
    sims = affinity.retrieved_sims(x64, sk, pos)
    np.testing.assert_array_equal(sims, affinity.retrieved_sims(x32, sk, pos))
    np.testing.assert_array_equal(affinity.retrieval(x64, sk, 3.0, pos, sims),
                                  affinity.retrieval(x32, sk, 3.0, pos, sims))
    cand = np.tile(np.arange(2), (6, 1))
    a = affinity.rescore_(x64, sk, 3.0, np.zeros((6, 4), np.float32), cand)
    b = affinity.rescore_(x32, sk, 3.0, np.zeros((6, 4), np.float32), cand)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[:, :2], affinity.exact(x32, sk, 3.0)[:, :2], rtol=1e-5)
    assert np.all(a[:, 2:] == 0)


def test_keys_an_index_does_not_return_fall_to_the_tail():
    """An IVF index probing one list returns fewer than k ids (-1 padding): the padding is no
    key, and every key not returned is in its class's tail."""
    rng = np.random.default_rng(13)
    c, d = 4, 16
    labels = rng.permutation(np.repeat(np.arange(c), [5, 8, 3, 6]))
    centres = unit(rng.standard_normal((c, d)))
    keys = unit(centres[labels] + 0.5 * rng.standard_normal((len(labels), d)))
    row_ids = rng.permutation(1000)[: len(keys)] + 7
    index = KeyIndex.build(keys, row_ids, "IVF4,Flat")  # nprobe 1
    x = unit(centres[rng.integers(0, c, 50)] + 0.5 * rng.standard_normal((50, d)))
    _, ids = index.search(x, 10)
    assert (ids == -1).any() and (ids >= 0).any()
    where = {int(r): i for i, r in enumerate(row_ids)}
    pos = np.array([[where.get(int(r), -1) for r in row] for row in ids])  # input order
    retrieved, tail = by_hand(x, keys, labels, c, 3.0, pos)
    ad = TipAdapter(keys, labels, c, beta=3.0, index=index, row_ids=row_ids, weighting="sum")
    np.testing.assert_allclose(ad.cache_term(x, mode="retrieval", k=10), retrieved + tail,
                               rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("x_scale, key_scale", [(3.0, 1.0), (1.0, 1.6), (0.5, 1.0)])
def test_non_unit_queries_and_keys_get_the_dense_formulas_tail(x_scale, key_scale):
    """Similarities outside [-1, 1] (queries off the sphere, or keys that fine-tuning moved):
    the tail is still the mean-field formula (a lower bound on dense numpy), and exact when a
    class's keys are identical, as for unit features."""
    rng = np.random.default_rng(15)
    c, d, beta = 6, 12, 3.0
    counts = np.array([4, 9, 1, 6, 12, 3])
    labels = rng.permutation(np.repeat(np.arange(c), counts))
    centres = key_scale * unit(rng.standard_normal((c, d)))
    x = x_scale * unit(rng.standard_normal((50, d)))
    dense = np.exp(-beta * (1 - x.astype(np.float64) @ centres.T.astype(np.float64)))
    if x_scale * key_scale > 1:
        assert dense.min() < np.exp(-2 * beta) and dense.max() > 1  # beyond the unit range
    ad = TipAdapter(centres[labels], labels, c, beta=beta, weighting="sum")
    for k in (1, 4):
        np.testing.assert_allclose(ad.cache_term(x, mode="retrieval", k=k), counts * dense,
                                   rtol=2e-5, atol=0)
    spread = (centres[labels] + 0.4 * key_scale * rng.standard_normal((len(labels), d)))
    sk = affinity.SortedKeys.build(spread, labels, c, "sum")
    keys = sk.keys
    pos = np.stack([rng.choice(len(keys), size=3, replace=False) for _ in x])
    retrieved, tail = by_hand(x, keys, sk.labels, c, beta, pos)
    got = affinity.retrieval(x, sk, beta, pos, affinity.retrieved_sims(x, sk, pos))
    np.testing.assert_allclose(got, retrieved + tail, rtol=2e-5, atol=0)
    exact = np.exp(-beta * (1 - x.astype(np.float64) @ keys.T.astype(np.float64))) @ np.eye(
        c)[sk.labels]
    assert np.all(got <= exact * (1 + 1e-5))
