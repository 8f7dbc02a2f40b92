"""`tipretrieval compact`: merging small shards keeps every row, id and value; a kill at any
point leaves the old or the new state readable; old snapshots get a clear error."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tipretrieval.cli import main
from tipretrieval.errors import BadInput, ConcurrentChange, TipError
from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store import compact as compact_mod
from tipretrieval.store.store import Store

DIM = 16
CLASSES = ["ant", "bee", "cat"]
PROV = Provenance("ViT-B-32", "openai", DIM)


def make_rows(n: int, k: int) -> Rows:
    rng = np.random.default_rng(k)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    views = sources = None
    if k % 5 == 4:  # some appends carry views and sources: a different layout
        views = rng.standard_normal((n, 2, DIM)).astype(np.float32)
        views /= np.linalg.norm(views, axis=-1, keepdims=True)
        sources = [f"/img/{k}/{i}.png" for i in range(n)]
    return Rows.make(ids=[f"k{k}-{i}" for i in range(n)],
                     features=x / np.linalg.norm(x, axis=1, keepdims=True),
                     labels=rng.integers(-1, 3, n), splits=["train", "val"][k % 2],
                     sources=sources, views=views)


def build(path: Path, appends: int = 12) -> Store:
    store = Store.create(path, dim=DIM, provenance=PROV, classes=CLASSES)
    for k in range(appends):
        store.append(make_rows(20 + k, k))
    return store


def everything(store: Store) -> Rows:
    return store.select(with_views=False, features_dtype=None)


def assert_same(a: Rows, b: Rows) -> None:
    for name in ("ids", "row_ids", "labels", "splits"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), name)
    assert a.features.tobytes() == b.features.tobytes()


def test_compact_merges_runs_of_one_layout_and_keeps_every_value(tmp_path):
    store = build(tmp_path / "s")
    before = everything(store)
    with_views = np.arange(86, 110)  # append 4: views and sources
    views_before = store.select(row_ids=with_views, with_views=True, features_dtype=None)
    res = CliRunner().invoke(main, ["compact", str(store.path)])
    assert res.exit_code == 0, res.output
    after = Store.open(store.path)
    # appends 4 and 9 have views: runs 0-3, 4, 5-8, 9, 10-11
    assert [s.rows for s in after.manifest.shards] == [20 + 21 + 22 + 23, 24,
                                                       25 + 26 + 27 + 28, 29, 30 + 31]
    assert "12 shards -> 5" in res.stdout
    assert sorted(p.name for p in (store.path / "shards").iterdir()) == \
        sorted(s.name for s in after.manifest.shards)
    after.verify()
    assert_same(everything(after), before)
    views_after = after.select(row_ids=with_views, with_views=True, features_dtype=None)
    assert views_after.sources.tolist() == views_before.sources.tolist()
    assert views_after.views.tobytes() == views_before.views.tobytes()
    assert after.existing_ids(["k3-5", "k11-30", "nope"]).tolist() == [True, True, False]
    after.append(make_rows(5, 100))
    with pytest.raises(BadInput, match="already exist"):
        after.append(make_rows(5, 7))
    res = CliRunner().invoke(main, ["compact", str(store.path)])
    assert res.exit_code == 0 and "nothing to merge" not in res.stdout  # 10-11 + new one


def test_old_snapshot_gets_a_clear_error_after_compaction(tmp_path):
    store = build(tmp_path / "s", 4)
    old = Store.open(store.path)
    store.compact()
    with pytest.raises(ConcurrentChange, match="replaced by `tipretrieval compact`.*rerun"):
        old.select()
    assert len(old.refresh().select()) == len(store)


def test_a_failure_at_any_step_leaves_a_readable_store(tmp_path, monkeypatch):
    store = build(tmp_path / "s", 6)
    before = everything(store)
    for step in ("write_shard", "save", "unlink"):
        with monkeypatch.context() as m:
            if step == "write_shard":
                m.setattr(compact_mod, "write_shard", _boom)
            elif step == "save":
                m.setattr("tipretrieval.util.jsonfile.write_text", _boom)
            else:
                m.setattr("tipretrieval.store.store.remove_replaced", _killed)
            if step == "unlink":  # killed after the new manifest: old files wait for a write
                with pytest.raises(KeyboardInterrupt):
                    Store.open(store.path).compact()
            else:
                with pytest.raises(TipError, match="disk full"):
                    Store.open(store.path).compact()
        reopened = Store.open(store.path)
        assert_same(everything(reopened), before)
        reopened.verify()
    store.append(make_rows(3, 50))  # the next write removes what the failures left
    named = {s.name for s in Store.open(store.path).manifest.shards}
    assert {p.name for p in (store.path / "shards").iterdir()} == named


def _boom(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _killed(*args, **kwargs):
    raise KeyboardInterrupt


def test_killed_compactions_leave_old_or_new_contents(tmp_path):
    path = tmp_path / "s"
    build(path, 30)
    before = everything(Store.open(path))
    rng = random.Random(0)
    script = ("import sys; from tipretrieval.store.store import Store; "
              "s = Store.open(sys.argv[1]); print('go', flush=True); s.compact()")
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "go\n"
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = Store.open(path)
        store.verify()
        assert_same(everything(store), before)
    Store.open(path).compact()
    assert len(Store.open(path).manifest.shards) < 30
    assert_same(everything(Store.open(path)), before)
