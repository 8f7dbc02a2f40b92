"""Tip-Adapter-F: training lowers the loss, is reproducible, keeps key order, picks on val."""

import numpy as np
import pytest
import torch

from tipretrieval.method.finetune import finetune


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    c, d, shots, views = 8, 32, 6, 3
    centres = unit(rng.standard_normal((c, d)))
    labels = rng.permutation(np.repeat(np.arange(c), shots))  # unsorted on purpose
    base = centres[labels][:, None, :] + 0.6 * rng.standard_normal((len(labels), views, d))
    train_views = unit(base)
    keys = unit(train_views.mean(axis=1))
    val_y = rng.integers(0, c, size=120)
    val_x = unit(centres[val_y] + 0.6 * rng.standard_normal((120, d)))
    common = unit(rng.standard_normal(d))  # weak text: the cache has to do the work
    text = unit(common + 0.02 * (centres + rng.standard_normal((c, d))))
    return dict(keys=keys, labels=labels, text=text, train_views=train_views,
                train_labels=labels, val_x=val_x, val_y=val_y, alpha=1.17, beta=1.0)


def run(data, **kw):
    args = dict(epochs=6, batch_size=16, lr=5e-2, steps=(10, 5), show_progress=False,
                device="cpu")
    args.update(kw)
    return finetune(**data, **args)


def test_lowers_loss_and_is_reproducible(data):
    a, b = run(data), run(data)
    assert a.train_loss[-1] < 0.8 * a.train_loss[0]
    np.testing.assert_array_equal(a.keys, b.keys)
    assert a.train_loss == b.train_loss and a.val_acc == b.val_acc
    assert not np.array_equal(run(data, seed=1).keys, a.keys)


def test_best_epoch_is_first_val_maximum_and_search_uses_new_keys(data):
    res = run(data)
    assert res.best_epoch == int(np.argmax(res.val_acc))
    assert len(res.val_acc) == 6 and res.tuned.n_val == 120
    assert res.to_json()["alpha"] == res.tuned.alpha


def test_zero_learning_rate_returns_the_keys_in_input_order(data):
    res = run(data, lr=0.0, epochs=1)
    np.testing.assert_array_equal(res.keys, data["keys"])


def test_bad_views_are_refused(data):
    from tipretrieval.errors import BadInput

    with pytest.raises(BadInput, match="views"):
        finetune(**{**data, "train_views": data["keys"]}, show_progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_reproducible_on_gpu(data):
    a, b = run(data, device="cuda"), run(data, device="cuda")
    np.testing.assert_array_equal(a.keys, b.keys)
    assert a.train_loss[-1] < a.train_loss[0]


def test_training_logits_use_the_class_weights(data):
    from tipretrieval.method import affinity
    from tipretrieval.method.finetune import _SlotKeys

    keep = (data["labels"] % 2 == 1) | (np.arange(len(data["labels"])) % 3 == 0)
    sk = affinity.SortedKeys.build(data["keys"][keep], data["labels"][keep], 8)
    assert not sk.uniform
    x = data["val_x"][:20]
    with torch.no_grad():
        got = _SlotKeys(sk)(torch.from_numpy(x), 2.0).numpy()
    np.testing.assert_allclose(got, affinity.exact(x, sk, 2.0), rtol=1e-5)
    sub = {**data, "keys": data["keys"][keep], "labels": data["labels"][keep],
           "train_views": data["train_views"][keep], "train_labels": data["labels"][keep]}
    bal, lit = run(sub), run(sub, weighting="sum")
    assert bal.train_loss != lit.train_loss
