"""The vectorised grid search equals the official double loop, ties included."""

import json

import numpy as np
import pytest
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


def dense_grid(val_x, val_y, keys, labels, text, weighting, steps, c=None):
    """Every class of every cell scored, through the dense fallback path."""
    from tipretrieval.method import affinity
    from tipretrieval.util.progress import progress

    c = text.shape[0] if text is not None else c
    sk = affinity.SortedKeys.build(keys, labels, c, weighting)
    clip = np.zeros((len(val_x), c), np.float32) if text is None else \
        (torch.mm(torch.from_numpy(val_x), torch.from_numpy(text).t()) * 100.0).numpy()
    betas, alphas = tune.grid_values(steps=steps)
    alphas = alphas if text is not None else [1.0]
    with progress(1, "t", disable=True) as bar:
        return tune._dense_block(affinity.similarities(val_x, sk), clip, val_y, sk, betas,
                                 alphas, bar)


@pytest.mark.parametrize("weighting", ["balanced", "sum"])
def test_pruned_grid_equals_dense_grid_on_unbalanced_caches(weighting):
    val_x, val_y, keys, labels, text = problem(5, c=8, shots=6, n=200)
    keep = (labels % 2 == 1) | (np.arange(len(labels)) % 6 < 2)  # even classes keep 2 keys
    keep &= labels != 6  # and one class none
    got = tune.search(val_x, val_y, keys[keep], labels[keep], text, weighting=weighting,
                      steps=(40, 10), show_progress=False)
    want = dense_grid(val_x, val_y, keys[keep], labels[keep], text, weighting, (40, 10))
    np.testing.assert_array_equal(np.round(got.grid * 200 / 100), want)
    assert got.grid.min() < got.grid.max()


def test_without_text_only_beta_is_searched_and_unit_features_are_not_required():
    val_x, val_y, keys, labels, _ = problem(6)
    got = tune.search(val_x, val_y, keys, labels, None, num_classes=6, steps=(30, 10),
                      show_progress=False)
    assert got.alphas == [1.0] and got.grid.shape == (30, 1) and got.alpha == 1.0
    np.testing.assert_array_equal(np.round(got.grid[:, 0] * 90 / 100),
                                  dense_grid(val_x, val_y, keys, labels, None, "balanced",
                                             (30, 10), c=6)[:, 0])
    big = tune.search(val_x * 3, val_y, keys, labels, problem(6)[4], steps=(10, 4),
                      show_progress=False)  # |x . k| > 1: the dense path
    want = dense_grid(val_x * 3, val_y, keys, labels, problem(6)[4], "balanced", (10, 4))
    np.testing.assert_array_equal(np.round(big.grid * 90 / 100), want)


def test_edge_warnings_name_the_scale_to_widen():
    res = tune.search(*problem(1), steps=(10, 4), show_progress=False)
    top = tune.TuneResult(res.alphas[-1], res.betas[3], 50.0, 90, res.betas, res.alphas,
                          res.grid, (7.0, 3.0))
    assert top.edge_warnings() == [f"alpha {res.alphas[-1]:.4g} is the top of its grid: the "
                                   "best may lie above it; widen the alpha scale, e.g. "
                                   "`scale=` 7 6"]
    low = tune.TuneResult(res.alphas[2], res.betas[0], 50.0, 90, res.betas, res.alphas,
                          res.grid)
    assert len(low.edge_warnings()) == 1 and low.edge_warnings()[0].startswith(
        "beta 0.1 is the bottom of its grid")
    mid = tune.TuneResult(res.alphas[1], res.betas[1], 50.0, 90, res.betas, res.alphas, res.grid)
    assert mid.edge_warnings() == []


def test_edge_warnings_on_grids_of_two_values_and_of_one():
    alphas = [0.1, 1.0]
    two = tune.TuneResult(1.0, 0.1, 50.0, 10, [0.1, 3.0], alphas, np.zeros((2, 2)))
    assert [w.split(" is the ")[1][:6] for w in two.edge_warnings()] == ["bottom", "top of"]
    assert two.edge_warnings()[0].startswith("beta 0.1 ")
    assert two.edge_warnings()[1].startswith("alpha 1 ")
    one_beta = tune.TuneResult(1.0, 2.0, 50.0, 10, [2.0], alphas, np.zeros((1, 2)))
    assert one_beta.edge_warnings() == [  # one beta has no edge; alpha is still checked
        "alpha 1 is the top of its grid: the best may lie above it; widen the alpha scale, "
        "e.g. `scale=` 7 6"]


def test_a_class_that_wins_only_at_small_alpha_is_scored_there():
    """The text favours class 1 by 2 logits; class 0 has six keys equal to the query, class 1
    one orthogonal key. Class 1 wins the small-alpha cells only: the pruned search must keep it
    as a contender for those cells and agree with the dense grid."""
    e = np.eye(8, dtype=np.float32)
    keys = np.stack([e[0]] * 6 + [e[1]])
    labels = np.array([0] * 6 + [1])
    text = np.stack([0.5 * e[0] + np.sqrt(1 - 0.5 ** 2) * e[2],
                     0.52 * e[0] + np.sqrt(1 - 0.52 ** 2) * e[3]]).astype(np.float32)
    val_x, val_y = e[:1], np.array([0])
    got = tune.search(val_x, val_y, keys, labels, text, weighting="sum", steps=(10, 10),
                      show_progress=False)
    want = dense_grid(val_x, val_y, keys, labels, text, "sum", (10, 10))
    assert (want[:, 0] == 0).all() and (want[:, -1] == 1).all()
    np.testing.assert_array_equal(got.grid / 100, want)


def test_the_grid_scale_round_trips_and_defaults_for_older_records():
    got = tune.search(*problem(1), scale=(5.0, 2.0), steps=(6, 3), show_progress=False)
    back = tune.TuneResult.from_json(json.loads(json.dumps(got.to_json())))
    assert back.scale == (5.0, 2.0) and back.betas == got.betas and back.alphas == got.alphas
    older = {k: v for k, v in got.to_json().items() if k != "scale"}  # before scale was kept
    assert tune.TuneResult.from_json(older).scale == (7.0, 3.0)


def test_a_tie_between_classes_goes_to_the_lower_index_as_argmax_does():
    """Classes 0 and 1 have the same keys and text: every cell ties them, and argmax picks
    class 0, so validation rows of class 1 are never right, and rows of class 0 always."""
    e = np.eye(8, dtype=np.float32)
    keys = np.stack([e[0], e[0], e[0], e[0], e[1]])
    labels = np.array([0, 0, 1, 1, 2])
    text = np.stack([e[0], e[0], e[1]])
    val_x, val_y = np.stack([e[0], e[0], e[1]]), np.array([1, 0, 2])
    got = tune.search(val_x, val_y, keys, labels, text, weighting="sum", steps=(5, 4),
                      show_progress=False)
    want = dense_grid(val_x, val_y, keys, labels, text, "sum", (5, 4))
    assert (want == 2).all()
    np.testing.assert_array_equal(np.round(got.grid * 3 / 100), want)


def test_one_class_is_always_right():
    val_x, _, keys, _, text = problem(2)
    got = tune.search(val_x, np.zeros(len(val_x), int), keys, np.zeros(len(keys), int),
                      text[:1], steps=(5, 4), show_progress=False)
    assert (got.grid == 100.0).all() and got.val_acc == 100.0


@pytest.mark.parametrize("scale", [1.0, 3.0])  # unit features: pruned path; x3: dense path
def test_counts_add_up_over_row_blocks(scale):
    val_x, val_y, keys, labels, text = problem(4)
    whole = tune.search(val_x * scale, val_y, keys, labels, text, steps=(6, 4),
                        show_progress=False)
    blocks = tune.search(val_x * scale, val_y, keys, labels, text, steps=(6, 4),
                         block_bytes=4 * 24 * 7, show_progress=False)  # 7 rows a block
    np.testing.assert_array_equal(blocks.grid, whole.grid)
    want = dense_grid(val_x * scale, val_y, keys, labels, text, "balanced", (6, 4))
    np.testing.assert_array_equal(np.round(whole.grid * len(val_y) / 100), want)
