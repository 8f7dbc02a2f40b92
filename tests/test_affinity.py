"""Exact and retrieval cache terms against independent dense numpy computations."""

import numpy as np
import pytest

from tipretrieval.errors import BadInput
from tipretrieval.method import affinity
from tipretrieval.method.adapter import TipAdapter, top_k
from tipretrieval.method.index import KeyIndex


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def dense_logits(x, keys, labels, text, alpha, beta, c):
    """The official dense formulation in float64 numpy."""
    x, keys = x.astype(np.float64), keys.astype(np.float64)
    onehot = np.eye(c)[labels]
    cache = np.exp(-beta * (1 - x @ keys.T)) @ onehot
    return 100 * x @ text.astype(np.float64).T + alpha * cache, cache


def clustered(rng, c=12, per=(1, 9), d=32, spread=0.35, n_query=300):
    """Unit keys in class clusters with unequal class sizes (one class empty), unsorted."""
    centres = unit(rng.standard_normal((c, d)))
    counts = rng.integers(per[0], per[1] + 1, size=c)
    counts[3] = 0
    labels = np.repeat(np.arange(c), counts)
    rng.shuffle(labels)
    keys = unit(centres[labels] + spread * rng.standard_normal((len(labels), d)))
    q_lab = rng.integers(0, c, size=n_query)
    x = unit(centres[q_lab] + spread * rng.standard_normal((n_query, d)))
    text = unit(centres + 0.5 * rng.standard_normal((c, d)))
    return x, keys, labels, text


@pytest.mark.parametrize("beta", [0.27, 5.5])
def test_exact_matches_dense(beta):
    rng = np.random.default_rng(1)
    x, keys, labels, text = clustered(rng)
    ad = TipAdapter(keys, labels, 12, text, alpha=1.7, beta=beta, weighting="sum")
    want, want_cache = dense_logits(x, keys, labels, text, 1.7, beta, 12)
    scale = np.abs(want).max()  # 1e-4 relative to the logits' scale (some logits cross 0)
    np.testing.assert_allclose(ad.logits(x), want, rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(ad.logits(x, method="cache"), 1.7 * want_cache, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(ad.logits(x, method="zero-shot"), 100 * x @ text.T, rtol=1e-4,
                               atol=1e-6 * scale)
    assert np.all(ad.logits(x, method="cache")[:, 3] == 0)


def test_exact_small_blocks_equal_large_blocks():
    from tipretrieval.method import affinity

    rng = np.random.default_rng(2)
    x, keys, labels, _ = clustered(rng, per=(20, 60), n_query=700)
    sk = affinity.SortedKeys.build(keys, labels, 12, "sum")
    big = affinity.exact(x, sk, 3.0)
    tiny = affinity.exact(x, sk, 3.0, block_bytes=4 * 512 * 7)  # 7-key blocks split classes
    np.testing.assert_allclose(tiny, big, rtol=1e-5)
    np.testing.assert_allclose(big, dense_logits(x, keys, labels, np.zeros((12, 32)), 1, 3.0,
                                                 12)[1], rtol=1e-4)


@pytest.mark.parametrize("tail", [True, False])
def test_retrieval_with_all_keys_is_exact(tail):
    rng = np.random.default_rng(3)
    x, keys, labels, text = clustered(rng)
    ad = TipAdapter(keys, labels, 12, text, alpha=2.0, beta=1.3,
                    row_ids=rng.permutation(1000)[: len(keys)] + 50)
    exact = ad.cache_term(x)
    got = ad.cache_term(x, mode="retrieval", k=len(keys) + 5, tail=tail)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ad.logits(x, mode="retrieval", k=len(keys)), ad.logits(x),
                               rtol=1e-5, atol=1e-5)


def test_tail_correction_beats_truncation():
    rng = np.random.default_rng(4)
    x, keys, labels, _ = clustered(rng, c=20, per=(30, 30), d=24, spread=0.8, n_query=400)
    labels_ok = labels.copy()
    ad = TipAdapter(keys, labels_ok, 20, beta=0.5)
    exact = ad.cache_term(x).argmax(1)
    trunc = ad.cache_term(x, mode="retrieval", k=8, tail=False).argmax(1)
    tail = ad.cache_term(x, mode="retrieval", k=8).argmax(1)
    assert np.mean(tail == exact) > np.mean(trunc == exact) + 0.1
    assert np.mean(tail == exact) > 0.95


def test_top_k_ties_and_probabilities():
    logits = np.array([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    p = top_k(logits, 3)
    assert p.classes.tolist() == [[1, 2, 3], [0, 1, 2]]
    e = np.exp(logits[0] - 3)
    np.testing.assert_allclose(p.probs[0], (e / e.sum())[[1, 2, 3]], rtol=1e-6)
    np.testing.assert_allclose(p.probs[1], 0.25)


def test_bad_inputs_name_the_fix():
    rng = np.random.default_rng(5)
    x, keys, labels, text = clustered(rng)
    with pytest.raises(BadInput, match="labels must lie"):
        TipAdapter(keys, labels + 20, 12)
    ad = TipAdapter(keys, labels, 12)
    with pytest.raises(BadInput, match="no text classifier"):
        ad.logits(x)
    with pytest.raises(BadInput, match="expected"):
        ad.logits(x[:, :5], method="cache")
    with pytest.raises(BadInput, match="unknown mode"):
        ad.logits(x, method="cache", mode="approx")


def test_tail_is_a_lower_bound_and_rescoring_makes_the_top_classes_exact():
    rng = np.random.default_rng(6)
    x, keys, labels, text = clustered(rng, c=20, per=(10, 40), d=24, spread=0.7, n_query=300)
    ad = TipAdapter(keys, labels, 20, text, alpha=3.0, beta=6.0, weighting="sum")
    exact = ad.cache_term(x)
    tail = ad.cache_term(x, mode="retrieval", k=4)
    assert np.all(tail <= exact * (1 + 1e-5) + 1e-6)
    got = ad.logits(x, method="cache", mode="retrieval", k=4, rescore=5)
    want = ad.logits(x, method="cache")
    top = np.argsort(-got, axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(np.take_along_axis(got, top, 1),
                               np.take_along_axis(want, top, 1), rtol=1e-5)
    plain = ad.logits(x, method="cache", mode="retrieval", k=4, rescore=0)
    agree = np.mean(got.argmax(1) == want.argmax(1))
    assert np.mean(plain.argmax(1) == want.argmax(1)) < 0.8 < 0.99 < agree
    tip = ad.logits(x, mode="retrieval", k=4)
    assert np.mean(tip.argmax(1) == ad.logits(x).argmax(1)) > 0.99


@pytest.mark.parametrize("seed", range(5))
def test_top_k_equals_stable_full_sort_on_tie_heavy_logits(seed):
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 4, size=(300, 37)).astype(np.float32)  # many ties at the k-th value
    for k in (1, 2, 5, 37):
        expected = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k(logits, k).classes, expected)


def test_logits_by_method_equals_each_method_alone():
    rng = np.random.default_rng(7)
    x, keys, labels, text = clustered(rng)
    ad = TipAdapter(keys, labels, text.shape[0], text=text, alpha=1.7, beta=3.0)
    methods = ["zero-shot", "cache", "tip"]
    for mode in ("exact", "retrieval"):
        together = ad.logits_by_method(x, methods, mode=mode, k=8)
        for m in methods:
            np.testing.assert_array_equal(together[m], ad.logits(x, method=m, mode=mode, k=8))


def weighted_dense(x, keys, labels, beta, c):
    """Balanced cache term in float64: each class's sum times n_bar / n_c (n_bar = keys /
    classes), a class without keys 0."""
    counts = np.bincount(labels, minlength=c)
    n_bar = counts.sum() / c
    w = np.where(counts > 0, n_bar / np.maximum(counts, 1), 0.0)
    return dense_logits(x, keys, labels, np.zeros((c, x.shape[1])), 1, beta, c)[1] * w


@pytest.mark.parametrize("beta", [0.27, 5.5])
def test_balanced_weighting_in_exact_retrieval_and_rescoring(beta):
    rng = np.random.default_rng(8)
    x, keys, labels, text = clustered(rng, per=(1, 30))
    want = weighted_dense(x, keys, labels, beta, 12)
    ad = TipAdapter(keys, labels, 12, text, alpha=1.0, beta=beta)
    assert ad.weighting == "balanced"
    np.testing.assert_allclose(ad.cache_term(x), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ad.cache_term(x, mode="retrieval", k=len(keys)), want,
                               rtol=1e-4, atol=1e-6)
    tail = ad.cache_term(x, mode="retrieval", k=3)
    assert np.all(tail <= want * (1 + 1e-4) + 1e-6)  # weighted tail stays a lower bound
    got = ad.logits(x, method="cache", mode="retrieval", k=3, rescore=4)
    top = np.argsort(-got, axis=1, kind="stable")[:, :4]
    np.testing.assert_allclose(np.take_along_axis(got, top, 1),
                               np.take_along_axis(want, top, 1), rtol=1e-4)
    literal = TipAdapter(keys, labels, 12, text, alpha=1.0, beta=beta, weighting="sum")
    np.testing.assert_allclose(literal.cache_term(x),
                               dense_logits(x, keys, labels, text, 1, beta, 12)[1], rtol=1e-4)
    assert not np.allclose(literal.cache_term(x), ad.cache_term(x))


def test_balanced_equals_sum_bit_for_bit_when_classes_are_equal():
    rng = np.random.default_rng(9)
    x, keys, labels, text = clustered(rng, per=(7, 7))  # 7 keys a class; class 3 empty
    x = x[:50]
    weights = TipAdapter(keys, labels, 12, text).weights  # n_bar = keys / classes = 77 / 12
    np.testing.assert_allclose(weights[np.arange(12) != 3], 11 / 12, rtol=1e-6)
    keep = labels != 3  # without the empty class every class has 7 keys: the official sum
    keys, labels, text = keys[keep], labels[keep] - (labels[keep] > 3), np.delete(text, 3, 0)
    a = TipAdapter(keys, labels, 11, text, 1.3, 2.0)
    b = TipAdapter(keys, labels, 11, text, 1.3, 2.0, weighting="sum")
    assert np.all(a.weights == 1.0)
    for mode in ("exact", "retrieval"):
        np.testing.assert_array_equal(a.logits(x, mode=mode, k=5), b.logits(x, mode=mode, k=5))
    with pytest.raises(BadInput, match="unknown weighting"):
        TipAdapter(keys, labels, 12, weighting="mean")


def test_gda_method_and_no_text_refusals():
    rng = np.random.default_rng(10)
    x, keys, labels, text = clustered(rng, per=(4, 9))
    ad = TipAdapter(keys, labels, 12, text, gda_alpha=0.3)
    term = ad.gda_term(x)
    np.testing.assert_array_equal(ad.logits(x, method="gda"),
                                  ad.text_logits(x) + term * np.float32(0.3))
    assert np.all(term[:, 3] == 0)  # the class without keys has no GDA term
    together = ad.logits_by_method(x, ["gda", "cache", "tip"])
    np.testing.assert_array_equal(together["gda"], ad.logits(x, method="gda"))
    bare = TipAdapter(keys, labels, 12)
    np.testing.assert_array_equal(bare.logits(x, method="gda"), term)
    for method in ("zero-shot", "tip"):
        with pytest.raises(BadInput, match="no text classifier: use method 'cache' or 'gda'"):
            bare.logits(x, method=method)


@pytest.mark.parametrize("spec", ["IVF4,SQ4", "IVF4,Flat"])
def test_retrieved_keys_are_scored_exactly_whatever_the_index_codes(spec):
    """Retrieval sums exact similarities of the retrieved keys: an index of quantised codes
    (SQ4: its scores are estimates) is rescored; an IVF-Flat index's scores are used as
    they are, and equal the exact ones."""
    rng = np.random.default_rng(8)
    x, keys, labels, text = clustered(rng, n_query=200)
    row_ids = rng.permutation(1000)[: len(keys)] + 50
    index = KeyIndex.build(keys, row_ids, spec, use_gpu=False)
    index.set_params("nprobe=2")
    ad = TipAdapter(keys, labels, 12, text, alpha=2.0, beta=4.0, index=index, row_ids=row_ids)
    index_sims, found = index.search(x, 6)
    sorted_keys = affinity.SortedKeys.build(keys, labels, 12)
    position = {r: i for i, r in enumerate(row_ids[sorted_keys.order].tolist())}
    pos = np.vectorize(lambda r: position.get(r, -1))(found)
    exact_sims = np.where(pos >= 0, np.einsum("bd,bkd->bk", x, sorted_keys.keys[pos]), 0)
    want = affinity.retrieval(x, sorted_keys, 4.0, pos, exact_sims)
    np.testing.assert_allclose(ad.cache_term(x, mode="retrieval", k=6), want, rtol=1e-5,
                               atol=1e-6)
    assert index.exact_sims == (spec == "IVF4,Flat")
    if not index.exact_sims:  # the estimates differ enough that using them would show
        assert np.abs(index_sims - exact_sims)[pos >= 0].max() > 1e-3


@pytest.mark.parametrize("n_keys, c", [(1, 1), (1, 4), (9, 1)])
def test_a_cache_of_one_key_or_one_class_matches_dense(n_keys, c):
    rng = np.random.default_rng(11)
    keys = unit(rng.standard_normal((n_keys, 16)))
    labels = np.full(n_keys, c - 1)  # with several classes, only the last has the key
    x = unit(rng.standard_normal((40, 16)))
    text = unit(rng.standard_normal((c, 16)))
    want = weighted_dense(x, keys, labels, 2.5, c)  # one key of 4 classes: weight 1/4
    ad = TipAdapter(keys, labels, c, text, alpha=1.5, beta=2.5)
    np.testing.assert_allclose(ad.cache_term(x), want, rtol=1e-5, atol=1e-7)
    for mode in ("exact", "retrieval"):
        np.testing.assert_allclose(ad.logits(x, method="cache", mode=mode, k=n_keys),
                                   1.5 * want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ad.logits(x, mode=mode, k=n_keys),
                                   100 * x @ text.T + 1.5 * want, rtol=1e-5, atol=1e-4)


def test_top_k_probabilities_are_each_rows_softmax_whatever_its_scale():
    logits = np.array([[1000.0, 998.0, 990.0],
                       [0.5, -0.5, 0.0],
                       [-2000.0, -2003.0, -2001.0]], dtype=np.float32)
    got = top_k(logits, 3)
    assert got.classes.tolist() == [[0, 1, 2], [0, 2, 1], [0, 2, 1]]
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    want = np.take_along_axis(e / e.sum(axis=1, keepdims=True), got.classes, axis=1)
    np.testing.assert_allclose(got.probs, want, rtol=1e-6)
    np.testing.assert_allclose(top_k(logits, 1).probs[:, 0], want[:, 0], rtol=1e-6)


@pytest.mark.parametrize("method", ["zero-shot", "cache", "tip", "gda"])
def test_logits_by_method_of_one_method_equals_that_method_alone(method):
    rng = np.random.default_rng(12)
    x, keys, labels, text = clustered(rng, n_query=50)
    for t in (text, None):
        ad = TipAdapter(keys, labels, 12, text=t, alpha=1.7, beta=3.0, gda_alpha=0.5)
        if t is None and method in ("zero-shot", "tip"):
            continue
        got = ad.logits_by_method(x, [method])
        assert list(got) == [method]
        np.testing.assert_array_equal(got[method], ad.logits(x, method=method))


def test_keys_keep_their_input_order_within_a_class():
    """Sorting by class is stable (NumPy's default sort is not above 16 equal labels): each
    class's keys, row ids and `order` follow the input order, with 40 keys per class."""
    rng = np.random.default_rng(16)
    labels = rng.permutation(np.repeat(np.arange(5), 40))
    keys = unit(rng.standard_normal((200, 8)))
    row_ids = rng.permutation(10_000)[:200]
    sk = affinity.SortedKeys.build(keys, labels, 5)
    ad = TipAdapter(keys, labels, 5, row_ids=row_ids)
    for c in range(5):
        members = np.flatnonzero(labels == c)  # input positions of class c, ascending
        span = slice(sk.offsets[c], sk.offsets[c + 1])
        np.testing.assert_array_equal(sk.order[span], members)
        np.testing.assert_array_equal(sk.keys[span], keys[members])
        np.testing.assert_array_equal(ad.row_ids[span], row_ids[members])
        np.testing.assert_array_equal(ad.keys[span], keys[members])


def test_top_k_of_float64_logits_gives_float32_probabilities():
    rng = np.random.default_rng(17)
    logits = rng.standard_normal((6, 9)) * 4  # float64
    got = top_k(logits, 4)
    assert got.probs.dtype == np.float32 and got.classes.dtype == np.int64
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(got.classes, np.argsort(-logits, axis=1)[:, :4])
    np.testing.assert_allclose(got.probs, np.take_along_axis(want, got.classes, axis=1),
                               rtol=1e-6)
