"""Store edge cases: a create killed half-way, file permissions, empty appends, mixed views."""

import os

import numpy as np
import pytest

from tipretrieval.errors import BadInput
from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store.store import Store

PROV = Provenance("ViT-B-32", "openai", 4)


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_create_after_a_create_killed_before_its_manifest(tmp_path):
    (tmp_path / "s" / "shards").mkdir(parents=True)  # what a kill after mkdir leaves
    store = Store.create(tmp_path / "s", dim=4, provenance=PROV)
    assert Store.open(tmp_path / "s").store_id == store.store_id


def test_files_get_the_umask_permissions_not_mkstemp_0600(tmp_path):
    store = Store.create(tmp_path / "s", dim=4, provenance=PROV)
    store.append(Rows.make(ids=["a"], features=unit(1)))
    umask = os.umask(0)
    os.umask(umask)
    for path in [tmp_path / "s" / "manifest.json", *(tmp_path / "s" / "shards").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_empty_append_changes_nothing(tmp_path):
    store = Store.create(tmp_path / "s", dim=4, provenance=PROV)
    store.append(Rows.make(ids=[], features=np.zeros((0, 4), np.float32)))
    store.append(Rows.make(ids=[], features=np.zeros((0, 4), np.float16), keep_float16=True,
                           views=np.zeros((0, 2, 4), np.float32)))
    assert len(Store.open(tmp_path / "s")) == 0
    assert Store.open(tmp_path / "s").generation == store.generation


def test_concat_refuses_rows_with_different_view_counts():
    a = Rows.make(ids=["a"], features=unit(1), views=unit(2).reshape(1, 2, 4))
    b = Rows.make(ids=["b"], features=unit(1, 1), views=unit(3, 1).reshape(1, 3, 4))
    with pytest.raises(BadInput, match="different numbers of views"):
        Rows.concat([a, b])
