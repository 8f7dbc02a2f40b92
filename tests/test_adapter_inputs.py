"""TipAdapter and SortedKeys: every refused input names the problem; classify, index loading,
queries of another type and the class-sorted layout behave as documented."""

import numpy as np
import pytest

from tipretrieval.errors import BadInput, TipError
from tipretrieval.method import affinity
from tipretrieval.method.adapter import TipAdapter, top_k
from tipretrieval.method.index import KeyIndex


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def parts():
    rng = np.random.default_rng(31)
    labels = np.array([2, 0, 1, 2, 0, 2, 1, 0])
    keys = unit(rng.standard_normal((8, 6)))
    text = unit(rng.standard_normal((4, 6)))  # class 3 has no keys
    x = unit(rng.standard_normal((9, 6)))
    return keys, labels, text, x


@pytest.mark.parametrize("build, message", [
    (lambda k, lab: (k[0], lab, 4), "2-D"),
    (lambda k, lab: (k, lab[:-1], 4), "7 labels for 8 keys"),
    (lambda k, lab: (k, lab, 0), "at least one class"),
    (lambda k, lab: (k, lab - 1, 4), r"\[-1, 1\]"),
    (lambda k, lab: (k, lab, 2), r"\[0, 2\]"),
])
def test_sorted_keys_refuse_bad_input(parts, build, message):
    keys, labels, _, _ = parts
    with pytest.raises(BadInput, match=message):
        affinity.SortedKeys.build(*build(keys, labels))


def test_sorted_keys_layout(parts):
    keys, labels, _, _ = parts
    sk = affinity.SortedKeys.build(keys, labels, 4)
    assert sk.num_classes == 4 and sk.counts.tolist() == [3, 2, 3, 0]
    assert sk.offsets.tolist() == [0, 3, 5, 8, 8] and sk.labels.tolist() == sorted(labels)
    assert sk.order.tolist() == [1, 4, 7, 2, 6, 0, 3, 5]  # stable within a class
    np.testing.assert_array_equal(sk.keys, keys[sk.order])
    want = np.stack([keys[labels == c].astype(np.float64).sum(0) if (labels == c).any()
                     else np.zeros(6) for c in range(4)])
    np.testing.assert_allclose(sk.class_sums, want, rtol=1e-6, atol=1e-7)
    assert sk.keys.dtype == np.float32 and sk.keys.flags.c_contiguous
    empty = affinity.SortedKeys.build(np.zeros((0, 6)), np.zeros(0), 3)
    assert empty.counts.tolist() == [0, 0, 0] and empty.class_sums.shape == (3, 6)
    assert np.all(affinity.exact(parts[3], empty, 2.0) == 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=np.zeros((3, 6))), r"shape \(3, 6\), expected \(4, 6\)"),
    (dict(row_ids=np.arange(7)), "7 row ids for 8 keys"),
])
def test_adapter_refuses_bad_input(parts, kwargs, message):
    keys, labels, _, _ = parts
    with pytest.raises(BadInput, match=message):
        TipAdapter(keys, labels, 4, **kwargs)


def test_logits_refuse_unknown_choices(parts):
    keys, labels, text, x = parts
    ad = TipAdapter(keys, labels, 4, text)
    with pytest.raises(BadInput, match="unknown method 'fast'"):
        ad.logits(x, method="fast")
    with pytest.raises(BadInput, match="unknown method 'fast'"):
        ad.logits_by_method(x, ["tip", "fast"])
    with pytest.raises(BadInput, match="k is 0"):
        ad.logits(x, mode="retrieval", k=0)
    with pytest.raises(BadInput, match="top-k is 0"):
        top_k(ad.logits(x), 0)


def test_classify_is_the_top_classes_of_the_logits(parts):
    keys, labels, text, x = parts
    ad = TipAdapter(keys, labels, 4, text, alpha=2.0, beta=3.0)
    got = ad.classify(x, top=2, method="cache")
    want = top_k(ad.logits(x, method="cache"), 2)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_array_equal(got.probs, want.probs)
    assert ad.classify(x).classes.shape == (9, 4)  # top 5 of 4 classes: all 4
    np.testing.assert_array_equal(ad.classify(x).classes, top_k(ad.logits(x), 4).classes)
    wide = TipAdapter(keys, labels, 7, unit(np.random.default_rng(0).standard_normal((7, 6))))
    assert wide.classify(x).classes.shape == (9, 5)  # the default: top 5


def test_queries_of_other_types_and_layouts_score_the_same(parts):
    keys, labels, text, x = parts
    ad = TipAdapter(keys.astype(np.float64), list(labels), 4, text.astype(np.float64),
                    alpha=1.5, beta=2.0)
    want = ad.logits(x)
    assert want.dtype == np.float32
    np.testing.assert_array_equal(ad.logits(x.astype(np.float64)), want)
    np.testing.assert_array_equal(ad.logits(np.asfortranarray(x)), want)
    np.testing.assert_allclose(ad.text_logits(x.tolist()), 100 * x @ text.T, rtol=1e-5,
                               atol=1e-4)
    retrieval = ad.logits(x, mode="retrieval", k=8, rescore=0)
    np.testing.assert_allclose(retrieval, want, rtol=1e-5, atol=1e-5)
    assert retrieval.dtype == np.float32
    assert ad.cache_term(x, mode="retrieval", k=3).dtype == np.float32


def test_the_index_is_built_or_loaded_once_and_only_when_needed(parts):
    keys, labels, text, x = parts
    calls = []

    def loader():
        calls.append(1)
        return KeyIndex.build(keys, np.arange(100, 108))

    ad = TipAdapter(keys, labels, 4, text, index=loader, row_ids=np.arange(100, 108))
    ad.logits(x)
    assert calls == []  # exact mode never loads it
    ad.logits(x, mode="retrieval", k=3)
    ad.logits(x, mode="retrieval", k=3)
    assert calls == [1]
    built = TipAdapter(keys, labels, 4, text)
    assert built.index.ntotal == 8 and built.index is built.index
    assert sorted(built.index.ids()) == list(range(8))


def test_an_index_with_foreign_ids_is_an_error(parts):
    keys, labels, text, x = parts
    ad = TipAdapter(keys, labels, 4, text, row_ids=np.arange(8),
                    index=KeyIndex.build(keys, np.arange(50, 58)))
    with pytest.raises(TipError, match="row ids this cache does not have"):
        ad.logits(x, mode="retrieval", k=2)


def test_retrieval_k_above_the_key_count_uses_every_key(parts):
    keys, labels, text, x = parts
    ad = TipAdapter(keys, labels, 4, text, alpha=1.0, beta=4.0, row_ids=np.arange(30, 38))
    np.testing.assert_allclose(ad.cache_term(x, mode="retrieval", k=100, tail=False),
                               ad.cache_term(x), rtol=1e-5)


def test_evidence_is_the_asked_class_keys_most_similar_to_each_query(parts):
    keys, labels, text, x = parts  # classes 0, 1, 2, 3 have 3, 2, 3 and 0 keys
    row_ids = np.array([70, 10, 55, 31, 90, 12, 44, 8])
    ad = TipAdapter(keys, labels, 4, text, row_ids=row_ids)
    classes = np.array([0, 1, 2, 3, 0, 2, 1, 0, 2])
    ids, sims = ad.evidence(x, classes, 3)
    assert ids.dtype == np.int64 and sims.dtype == np.float32 and ids.shape == (9, 3)
    for b, c in enumerate(classes):
        mine = np.flatnonzero(labels == c)
        s = keys[mine].astype(np.float64) @ x[b].astype(np.float64)
        best = np.argsort(-s, kind="stable")
        assert ids[b].tolist() == row_ids[mine[best]].tolist() + [-1] * (3 - len(mine))
        np.testing.assert_allclose(sims[b, :len(mine)], s[best], rtol=1e-5, atol=1e-6)
        assert np.isnan(sims[b, len(mine):]).all()
