"""Tip-Adapter-F against a dense reference of the official training loop, and its input checks."""

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tipretrieval.errors import BadInput
from tipretrieval.method import finetune as ft
from tipretrieval.method.tune import search


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """5 classes with 2..5 shots each (unequal: empty slots in the grid), 3 views, unsorted."""
    rng = np.random.default_rng(21)
    c, d = 5, 12
    centres = unit(rng.standard_normal((c, d)))
    labels = rng.permutation(np.repeat(np.arange(c), [2, 5, 3, 4, 2]))
    views = centres[labels][:, None, :] + 0.8 * rng.standard_normal((len(labels), 3, d))
    keys = unit(views.mean(axis=1))
    val_y = rng.integers(0, c, size=50)
    val_x = unit(centres[val_y] + 0.8 * rng.standard_normal((50, d)))
    text = unit(0.3 * centres + rng.standard_normal(d))
    return dict(keys=keys, labels=labels, text=text, train_views=views.astype(np.float32),
                train_labels=labels, val_x=val_x, val_y=val_y, alpha=2.0, beta=3.0)


def reference(data, epochs, batch_size, lr, eps, seed):
    """The official loop, densely: keys a (M, D) parameter, values one-hot, AdamW + cosine over
    all steps, one random view per image per epoch; keys, losses and val accuracy per epoch."""
    keys = torch.nn.Parameter(torch.from_numpy(data["keys"]).clone())
    values = torch.eye(5)[torch.from_numpy(data["labels"])]
    text = torch.from_numpy(data["text"])
    views = F.normalize(torch.from_numpy(data["train_views"]), dim=-1)
    y = torch.from_numpy(data["train_labels"])
    vx, vy = torch.from_numpy(data["val_x"]), torch.from_numpy(data["val_y"])
    alpha, beta = data["alpha"], data["beta"]

    def logits(x):
        cache = ((-1) * (beta - beta * x @ keys.t())).exp() @ values
        return 100.0 * x @ text.t() + cache * alpha

    gen = torch.Generator().manual_seed(seed)
    n = len(views)
    opt = torch.optim.AdamW([keys], lr=lr, eps=eps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * -(-n // batch_size))
    out = []
    for _ in range(epochs):
        pick = torch.randint(views.shape[1], (n,), generator=gen)
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for b0 in range(0, n, batch_size):
            idx = order[b0:b0 + batch_size]
            loss = F.cross_entropy(logits(views[idx, pick[idx]]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        with torch.no_grad():
            acc = 100.0 * float((logits(vx).argmax(1) == vy).float().mean())
        out.append((keys.detach().numpy().copy(), total / n, acc))
    return out


@pytest.mark.parametrize("batch_size, lr, eps, seed", [(4, 0.05, 1e-4, 0), (7, 0.02, 1e-2, 3)])
def test_matches_the_dense_official_loop(data, batch_size, lr, eps, seed):
    epochs = 4
    res = ft.finetune(**data, epochs=epochs, batch_size=batch_size, lr=lr, eps=eps, seed=seed,
                      steps=(3, 2), device="cpu", weighting="sum", show_progress=False)
    ref = reference(data, epochs, batch_size, lr, eps, seed)  # the official sum, unequal classes
    np.testing.assert_allclose(res.train_loss, [r[1] for r in ref], rtol=1e-4)
    assert res.val_acc == pytest.approx([r[2] for r in ref])
    best = int(np.argmax([r[2] for r in ref]))
    assert res.best_epoch == best
    np.testing.assert_allclose(res.keys, ref[best][0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(res.keys, data["keys"], atol=1e-3)


def test_float64_and_column_inputs_give_the_float32_result(data):
    args = dict(epochs=2, batch_size=5, lr=0.05, steps=(3, 2), device="cpu", show_progress=False)
    want = ft.finetune(**data, **args)
    wide = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in data.items()
            if isinstance(v, np.ndarray)}
    got = ft.finetune(**{**data, **wide, "train_labels": data["train_labels"][:, None],
                         "val_y": data["val_y"][:, None]}, **args)
    np.testing.assert_allclose(got.keys, want.keys, rtol=1e-5, atol=1e-6)
    assert got.val_acc == want.val_acc and got.best_epoch == want.best_epoch
    assert got.keys.dtype == np.float32


def test_defaults_are_the_official_hyperparameters():
    params = inspect.signature(ft.finetune).parameters
    official = dict(epochs=20, batch_size=256, lr=1e-3, eps=1e-4, seed=0,
                    scale=(7.0, 3.0), steps=(200, 20))
    assert {k: params[k].default for k in official} == official


@pytest.mark.parametrize("change, message", [
    (lambda d: {"train_views": d["keys"]}, "views have shape"),  # 2-D
    (lambda d: {"train_views": d["train_views"][:, :, :5]}, "views have shape"),  # wrong dim
    (lambda d: {"train_views": d["train_views"][:, :0]}, "views have shape"),  # no view
    (lambda d: {"train_labels": d["train_labels"][:-1]}, "one label per training image"),
    (lambda d: {"train_views": d["train_views"][:0], "train_labels": d["train_labels"][:0]},
     "at least one"),
    (lambda d: {"train_labels": d["train_labels"] - 1}, r"lie in \[0, 5\)"),
    (lambda d: {"train_labels": d["train_labels"] + 1}, r"lie in \[0, 5\)"),
    (lambda d: {"epochs": 0}, "must be positive"),
    (lambda d: {"batch_size": 0}, "must be positive"),
])
def test_bad_inputs_are_refused(data, change, message):
    args = {**data, "epochs": 1, "batch_size": 4, "steps": (2, 2), "device": "cpu",
            "show_progress": False}
    with pytest.raises(BadInput, match=message):
        ft.finetune(**{**args, **change(data)})


def test_one_training_image_and_batch_size_one_are_accepted(data):
    one = {**data, "train_views": data["train_views"][:1], "train_labels": data["labels"][:1]}
    res = ft.finetune(**one, epochs=1, batch_size=1, steps=(2, 2), device="cpu",
                      show_progress=False)
    assert len(res.train_loss) == 1 and res.keys.shape == data["keys"].shape


def test_accuracy_adds_up_over_evaluation_blocks(data, monkeypatch):
    args = dict(epochs=2, batch_size=5, lr=0.05, steps=(3, 2), device="cpu", show_progress=False)
    whole = ft.finetune(**data, **args)
    monkeypatch.setattr(ft, "EVAL_ROWS", 7)  # 50 validation rows in 8 blocks
    assert ft.finetune(**data, **args).val_acc == whole.val_acc


def test_to_json_records_the_curves_and_the_choice(data):
    res = ft.finetune(**data, epochs=2, batch_size=5, lr=0.05, steps=(3, 2), device="cpu",
                      show_progress=False)
    assert res.to_json() == {
        "train_loss": res.train_loss, "val_acc": res.val_acc, "best_epoch": res.best_epoch,
        "alpha": res.tuned.alpha, "beta": res.tuned.beta, "tuned_val_acc": res.tuned.val_acc}


def test_defaults_run_the_official_schedule_and_search(data):
    """No hyperparameters given: 20 epochs, batch 256, AdamW lr 1e-3 eps 1e-4, seed 0, then
    the official 200 x 20 grid; device "auto" is the CPU here."""
    res = ft.finetune(**data, weighting="sum", show_progress=False)  # the official sum
    ref = reference(data, epochs=20, batch_size=256, lr=1e-3, eps=1e-4, seed=0)
    assert len(res.train_loss) == 20
    np.testing.assert_allclose(res.train_loss, [r[1] for r in ref], rtol=1e-4)
    np.testing.assert_allclose(res.keys, ref[res.best_epoch][0], rtol=1e-4, atol=1e-5)
    grid = search(data["val_x"], data["val_y"], res.keys, data["labels"], data["text"],
                  weighting="sum", show_progress=False)
    assert (res.tuned.alpha, res.tuned.beta) == (grid.alpha, grid.beta)
    assert res.tuned.grid.shape == (200, 20)
    if not torch.cuda.is_available():
        auto = ft.finetune(**data, epochs=2, batch_size=5, steps=(2, 2), device="auto",
                           show_progress=False)
        cpu = ft.finetune(**data, epochs=2, batch_size=5, steps=(2, 2), device="cpu",
                          show_progress=False)
        np.testing.assert_array_equal(auto.keys, cpu.keys)
