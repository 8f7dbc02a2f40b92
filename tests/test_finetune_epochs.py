"""Tip-Adapter-F starts from the training-free adapter and keeps the first best epoch's keys."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tipretrieval.method import affinity
from tipretrieval.method import finetune as ft
from tipretrieval.method.adapter import TipAdapter
from tipretrieval.method.tune import search


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def make(seed, views=2, flip=0.4):
    """6 classes x 4 shots (40% of training labels wrong: validation peaks early), weak text."""
    rng = np.random.default_rng(seed)
    c, d, shots = 6, 16, 4
    centres = unit(rng.standard_normal((c, d)))
    labels = np.repeat(np.arange(c), shots)
    train_views = unit(centres[labels][:, None, :]
                       + 0.7 * rng.standard_normal((len(labels), views, d)))
    keys = unit(train_views.mean(axis=1))
    noisy = labels.copy()
    flipped = rng.random(len(labels)) < flip
    noisy[flipped] = rng.integers(0, c, flipped.sum())
    val_y = rng.integers(0, c, size=60)
    val_x = unit(centres[val_y] + 0.7 * rng.standard_normal((60, d)))
    text = unit(rng.standard_normal(d) + 0.02 * rng.standard_normal((c, d)))
    order = rng.permutation(len(labels))  # keys in no particular order
    return dict(keys=keys[order], labels=labels[order], text=text,
                train_views=train_views[order], train_labels=noisy[order], val_x=val_x,
                val_y=val_y, alpha=1.0, beta=2.0)


def run(data, **kw):
    args = dict(epochs=6, batch_size=8, lr=0.2, steps=(4, 3), show_progress=False, device="cpu")
    return ft.finetune(**data, **{**args, **kw})


def accuracy(data, keys):
    ad = TipAdapter(keys, data["labels"], 6, data["text"], alpha=data["alpha"],
                    beta=data["beta"])
    return 100.0 * np.mean(ad.logits(data["val_x"]).argmax(1) == data["val_y"])


def test_the_model_starts_as_the_training_free_cache_term():
    data = make(0)
    sk = affinity.SortedKeys.build(data["keys"], data["labels"], 6)
    x = unit(np.random.default_rng(1).standard_normal((30, 16)))
    for beta in (0.5, 2.0, 6.0):
        got = ft._SlotKeys(sk)(torch.from_numpy(x), beta).detach().numpy()
        np.testing.assert_allclose(got, affinity.exact(x, sk, beta), rtol=1e-5, atol=1e-7)


def test_epoch_0_without_learning_is_the_training_free_adapter():
    data = make(0, views=1)  # one view: epoch 0 sees exactly the keys' own features
    data["train_views"] = data["keys"][:, None, :]
    res = run(data, lr=0.0, epochs=2)
    ad = TipAdapter(data["keys"], data["labels"], 6, data["text"], alpha=1.0, beta=2.0)
    logits = torch.from_numpy(ad.logits(data["keys"]).astype(np.float64))
    want = float(F.cross_entropy(logits, torch.from_numpy(data["train_labels"])))
    assert res.train_loss == pytest.approx([want, want], rel=1e-5)
    assert res.val_acc == pytest.approx([accuracy(data, data["keys"])] * 2)
    np.testing.assert_array_equal(res.keys, data["keys"])


def test_keeps_the_keys_of_an_early_validation_peak():
    data = make(3)  # val accuracy 23.3, 25.0, 20.0, 15.0, 15.0, 15.0
    res = run(data)
    assert res.val_acc[-1] < max(res.val_acc) and res.best_epoch < len(res.val_acc) - 1
    assert res.best_epoch == res.val_acc.index(max(res.val_acc))
    assert accuracy(data, res.keys) == pytest.approx(res.val_acc[res.best_epoch])
    again = search(data["val_x"], data["val_y"], res.keys, data["labels"], data["text"],
                   steps=(4, 3), show_progress=False)
    assert (again.alpha, again.beta, again.val_acc) == \
        (res.tuned.alpha, res.tuned.beta, res.tuned.val_acc)
    np.testing.assert_array_equal(again.grid, res.tuned.grid)


def test_a_tie_keeps_the_earlier_epoch(monkeypatch):
    """Validation accuracy scripted as 40, 70, 55, 70, 60: epoch 1's keys are returned."""
    data = make(2)
    script, seen = iter([40.0, 70.0, 55.0, 70.0, 60.0]), []

    def scripted(model, *args):
        seen.append(model.keys().copy())
        return next(script)

    monkeypatch.setattr(ft, "_accuracy", scripted)
    res = run(data, epochs=5)
    assert res.best_epoch == 1 and res.val_acc == [40.0, 70.0, 55.0, 70.0, 60.0]
    assert not np.array_equal(seen[1], seen[3])
    order = affinity.SortedKeys.build(data["keys"], data["labels"], 6).order
    np.testing.assert_array_equal(res.keys[order], seen[1])  # sorted back to the input order


def test_an_all_zero_validation_run_keeps_epoch_0_keys_not_the_untrained_ones(monkeypatch):
    data = make(2)
    seen = []

    def hopeless(model, *args):
        seen.append(model.keys().copy())
        return 0.0

    monkeypatch.setattr(ft, "_accuracy", hopeless)
    res = run(data, epochs=3)
    assert res.best_epoch == 0 and res.val_acc == [0.0, 0.0, 0.0]
    order = affinity.SortedKeys.build(data["keys"], data["labels"], 6).order
    np.testing.assert_array_equal(res.keys[order], seen[0])
    assert not np.allclose(res.keys, data["keys"])  # epoch 0 trained them


def test_validation_accuracy_uses_the_official_logits_on_a_knife_edge():
    """A val row where the text favours a wrong class and the cache the true one; alpha sets
    the true class 0.2% of the text gap ahead, or behind: val accuracy 100 or 0, as the
    training-free adapter says (lr 0: the keys never move)."""
    data = make(5)
    ad = TipAdapter(data["keys"], data["labels"], 6, data["text"], alpha=1.0, beta=2.0)
    clip, cache = ad.text_logits(data["val_x"]), ad.cache_term(data["val_x"])
    for row, y in enumerate(data["val_y"]):
        b = int(np.argmax(clip[row]))
        if b != y and cache[row, y] > cache[row, b]:
            break
    assert b != y and cache[row, y] > cache[row, b]  # such a row was found
    edge = float(clip[row, b] - clip[row, y]) / float(cache[row, y] - cache[row, b])
    for factor, want in ((1.002, 100.0), (0.998, 0.0)):
        alpha = edge * factor
        knife = {**data, "val_x": data["val_x"][row:row + 1], "val_y": data["val_y"][row:row + 1],
                 "alpha": alpha}
        adapter = TipAdapter(data["keys"], data["labels"], 6, data["text"], alpha=alpha,
                             beta=2.0)
        assert (adapter.logits(knife["val_x"]).argmax(1)[0] == y) == (want == 100.0)
        assert run(knife, lr=0.0, epochs=1).val_acc == [want]
