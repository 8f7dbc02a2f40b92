"""The vectorised grid search equals the official double loop, ties included."""

import json

import numpy as np
import torch

from tipretrieval.method import tune


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def official_search(val_x, val_y, keys, labels, text, scale, steps):
    """A transcription of the official search_hp loop (torch float32, dense one-hot)."""
    x, k, w = (torch.from_numpy(a) for a in (val_x, keys, text))
    values = torch.nn.functional.one_hot(torch.from_numpy(labels), len(text)).float()
    betas = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alphas = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    best_acc, best_beta, best_alpha = 0.0, 0.0, 0.0
    for beta in betas:
        for alpha in alphas:
            affinity = x @ k.t()
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            clip_logits = 100.0 * x @ w.t()
            tip_logits = clip_logits + cache_logits * alpha
            acc = 100 * float((tip_logits.argmax(1).numpy() == val_y).sum()) / len(val_y)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_alpha, best_beta, best_acc


def problem(seed, c=6, shots=4, n=90, d=16, noise=0.4):
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((c, d)))
    labels = np.repeat(np.arange(c), shots)
    keys = unit(centres[labels] + noise * rng.standard_normal((len(labels), d)))
    val_y = rng.integers(0, c, size=n)
    val_x = unit(centres[val_y] + noise * rng.standard_normal((n, d)))
    common = unit(rng.standard_normal(d))  # text close together: weak, so alpha matters
    text = unit(common + 0.06 * (centres + rng.standard_normal((c, d))))
    return val_x, val_y, keys, labels, text


def test_matches_official_loop_with_many_ties():
    ties = []
    for seed in range(3):
        args = problem(seed)
        got = tune.search(*args, steps=(40, 10), show_progress=False)
        want = official_search(*args, scale=(7, 3), steps=(40, 10))
        assert (got.alpha, got.beta) == want[:2]
        assert abs(got.val_acc - want[2]) < 1e-9
        assert got.grid.max() == got.val_acc and got.grid.min() < got.val_acc
        ties.append(int((got.grid == got.val_acc).sum()))
        assert (got.alpha, got.beta) != (0.1, 0.1)  # not simply the first cell
    assert max(ties) > 100  # tie-heavy: the first maximum decides


def test_blocks_of_validation_rows_add_up():
    args = problem(3, n=150)
    whole = tune.search(*args, steps=(20, 5), show_progress=False)
    blocked = tune.search(*args, steps=(20, 5), block_bytes=4 * 30 * 24, show_progress=False)
    np.testing.assert_array_equal(whole.grid, blocked.grid)


def test_grid_values_are_the_official_lists():
    betas, alphas = tune.grid_values()
    assert len(betas) == 200 and len(alphas) == 20
    assert betas[5] == 5 * 6.9 / 200 + 0.1 and alphas[17] == 17 * 2.9 / 20 + 0.1


def test_json_round_trip_and_heatmap(tmp_path):
    got = tune.search(*problem(1), steps=(10, 4), show_progress=False)
    got.save_json(tmp_path / "grid.json")
    back = tune.TuneResult.from_json(json.loads((tmp_path / "grid.json").read_text()))
    assert (back.alpha, back.beta, back.val_acc) == (got.alpha, got.beta, got.val_acc)
    np.testing.assert_array_equal(back.grid, got.grid)
    got.save_heatmap(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
