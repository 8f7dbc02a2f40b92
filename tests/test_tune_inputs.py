"""Tuning: a saved result reads back field for field; bad grids and validation sets are refused."""

import json

import numpy as np
import pytest

from tipretrieval.errors import BadInput
from tipretrieval.method import tune


def test_every_field_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(3)
    text = rng.standard_normal((3, 8)).astype(np.float32)
    keys = rng.standard_normal((6, 8)).astype(np.float32)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    got = tune.search(x, rng.integers(0, 3, 20), keys, np.arange(6) % 3, text, steps=(4, 3),
                      show_progress=False)
    got.save_json(tmp_path / "t.json")
    back = tune.TuneResult.from_json(json.loads((tmp_path / "t.json").read_text()))
    assert (back.alpha, back.beta, back.val_acc, back.n_val, back.betas, back.alphas) == \
        (got.alpha, got.beta, got.val_acc, 20, got.betas, got.alphas)
    assert back.grid.dtype == np.float64
    np.testing.assert_array_equal(back.grid, got.grid)


def test_a_one_point_grid_is_allowed_and_an_empty_one_refused():
    assert tune.grid_values(steps=(1, 1)) == ([0.1], [0.1])
    for steps in ((0, 5), (5, 0)):
        with pytest.raises(BadInput, match="must be positive"):
            tune.grid_values(steps=steps)


@pytest.mark.parametrize("x, y", [
    (np.ones((5, 8)), np.zeros(4)),  # one label short
    (np.ones(8), np.zeros(1)),       # not 2-D
    (np.ones((0, 8)), np.zeros(0)),  # no rows
])
def test_bad_validation_sets_are_refused(x, y):
    rng = np.random.default_rng(0)
    with pytest.raises(BadInput, match="validation features"):
        tune.search(x, y, rng.standard_normal((3, 8)), np.arange(3), rng.standard_normal((3, 8)),
                    steps=(2, 2), show_progress=False)


def test_float64_inputs_search_as_float32():
    rng = np.random.default_rng(4)
    text = rng.standard_normal((3, 8))
    keys = rng.standard_normal((6, 8))
    x = rng.standard_normal((20, 8))
    y = rng.integers(0, 3, 20)
    wide = tune.search(x, y, keys, np.arange(6) % 3, text, steps=(4, 3), show_progress=False)
    narrow = tune.search(x.astype(np.float32), y, keys.astype(np.float32), np.arange(6) % 3,
                         text.astype(np.float32), steps=(4, 3), show_progress=False)
    np.testing.assert_array_equal(wide.grid, narrow.grid)
