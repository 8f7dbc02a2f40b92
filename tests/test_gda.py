"""GDA: statistics against the official fit, incremental updates against a refit."""

import numpy as np
import pytest
import torch

from tipretrieval.errors import BadInput
from tipretrieval.method import gda
from tipretrieval.method.adapter import TipAdapter


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def official_fit(vecs, labels, c):
    """A transcription of the official GDA fit (Wang et al.), torch float64."""
    vecs, labels = torch.from_numpy(vecs).double(), torch.from_numpy(labels)
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(c)])
    center = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(c)])
    cov = center.T.cov()
    d = center.shape[1]
    inv = d * torch.linalg.pinv((center.shape[0] - 1) * cov + cov.trace() * torch.eye(d,
                                                                                  dtype=cov.dtype))
    w = mus @ inv
    b = torch.full((c,), 1.0 / c, dtype=cov.dtype).log() - (mus * w).sum(dim=1) / 2
    return w.numpy(), b.numpy()


def data(seed, c=5, per=(3, 12), d=16, n=200):
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((c, d)))
    labels = np.repeat(np.arange(c), rng.integers(per[0], per[1] + 1, size=c))
    feats = unit(centres[labels] + 0.5 * rng.standard_normal((len(labels), d)))
    qy = rng.integers(0, c, size=n)
    q = unit(centres[qy] + 0.5 * rng.standard_normal((n, d)))
    return feats, rng.permutation(labels), q, qy


def test_fit_equals_the_official_fit():
    feats, labels, q, _ = data(0)
    model = gda.GDAStats.fit(feats, labels, 5).model()
    w, b = official_fit(feats, labels, 5)
    scale = np.abs(w).max()
    np.testing.assert_allclose(model.weights, w, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(model.bias, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    np.testing.assert_allclose(model.logits(q), q.astype(np.float64) @ w.T + b, rtol=1e-4,
                               atol=1e-4 * scale)


def test_add_and_remove_equal_a_refit():
    feats, labels, q, _ = data(1)
    more, more_y, _, _ = data(2, per=(1, 4))
    stats = gda.GDAStats.fit(feats, labels, 5).with_classes(6)
    grown = stats.add(more, np.where(more_y == 4, 5, more_y))  # a new class 5 too
    all_y = np.concatenate([labels, np.where(more_y == 4, 5, more_y)])
    refit = gda.GDAStats.fit(np.vstack([feats, more]), all_y, 6)
    for got, want in ((grown, refit),
                      (grown.remove(feats[:7], labels[:7]),
                       gda.GDAStats.fit(np.vstack([feats[7:], more]), all_y[7:], 6))):
        a, b = got.model(), want.model()
        np.testing.assert_array_equal(got.counts, want.counts)
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.bias, b.bias, rtol=1e-5, atol=1e-5)
    with pytest.raises(BadInput, match="removing more"):
        stats.remove(feats[labels == 0][:1].repeat(50, axis=0), np.zeros(50, np.int64))


def test_one_feature_per_class_has_no_term_spread_and_empty_class_no_term():
    feats, labels, q, _ = data(3, per=(1, 1))
    model = gda.GDAStats.fit(feats, labels, 6).model()  # class 5 has no features
    assert np.all(model.weights == 0)  # no within-class spread: GDA = zero-shot
    assert model.bias[5] == 0 and np.all(model.bias[:5] == np.float32(np.log(1 / 6)))


def test_alpha_search_keeps_the_first_maximum():
    feats, labels, q, qy = data(4)
    term = gda.GDAStats.fit(feats, labels, 5).model().logits(q)
    rng = np.random.default_rng(0)
    clip = (100 * rng.standard_normal((len(q), 5)) * 0.01).astype(np.float32)
    res = gda.search_alpha(clip, term, qy)
    accs = [100 * np.mean((clip + term * np.float32(a)).argmax(1) == qy) for a in gda.ALPHAS]
    assert res.accs == tuple(accs) and res.alpha == gda.ALPHAS[int(np.argmax(accs))]
    assert gda.search_alpha(None, term, qy).alpha == 1.0
    with pytest.raises(BadInput, match="one label per validation row"):
        gda.search_alpha(clip, term, qy[:-1])


def test_an_adapter_uses_the_gda_statistics_it_is_given():
    """A cache's GDA statistics are fitted on the shots' views, not on its keys: the adapter
    must use them as given (here fitted on other features) rather than refit on the keys."""
    keys, labels, q, _ = data(5)
    views, view_labels, _, _ = data(6, per=(6, 20))
    text = unit(np.random.default_rng(7).standard_normal((5, 16)))
    stats = gda.GDAStats.fit(views, view_labels, 5)
    ad = TipAdapter(keys, labels, 5, text, gda_stats=stats, gda_alpha=0.3)
    w, b = official_fit(views, view_labels, 5)
    term = q.astype(np.float64) @ w.T + b
    want = 100 * q.astype(np.float64) @ text.T.astype(np.float64) + 0.3 * term
    np.testing.assert_allclose(ad.gda_term(q), term, rtol=1e-4, atol=1e-4 * np.abs(term).max())
    np.testing.assert_allclose(ad.logits(q, method="gda"), want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    w_keys, b_keys = official_fit(keys, labels, 5)  # what a refit on the keys would give
    refit = q.astype(np.float64) @ w_keys.T + b_keys
    assert np.abs(refit - term).max() > 0.1 * np.abs(term).max()
