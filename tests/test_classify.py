"""Batch classification: top-k against numpy, formats, provenance, parameters, kill -9 + resume."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from tipretrieval.cache.cache import Cache
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.errors import BadInput, CorruptData, NewerFormat
from tipretrieval.jobs.classify import (
    JOURNAL,
    SUCCESS,
    ClassifyOptions,
    Journal,
    classify_store,
    read_output,
)
from tipretrieval.jobs.classify.output import WRITERS, Results
from tipretrieval.provenance import Provenance
from tipretrieval.store.store import Store

CLI = [sys.executable, "-m", "tipretrieval"]
FIELDS = ("ids", "row_ids", "classes", "names", "probs", "logits")


def make_inputs(root: Path, queries_per_class: int = 30) -> tuple[Path, Path]:
    """A synthetic store (20 classes, dim 64) and a 4-shot cache with alpha 2, beta 5."""
    data = make_dataset(20, 64, seed=3)
    store = write_store(root / "store", data, SplitSizes(train=6, val=1, test=2,
                                                         query=queries_per_class, views=2))
    cache = Cache.build(store, 4, text=data.text)
    cache.set_params(2.0, 5.0)
    cache.save(root / "cache")
    return root / "cache", root / "store"


def assert_same(a: Results, b: Results) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name


def part_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    return make_inputs(tmp_path_factory.mktemp("classify"))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """An uninterrupted parquet run with logits, split 'query', 64-row parts."""
    out = tmp_path_factory.mktemp("ref") / "out"
    classify_store(*inputs, out, ClassifyOptions(batch_size=64, logits=True, split="query"),
                   show_progress=False)
    return out


def test_top_k_and_probabilities_match_numpy(inputs, reference):
    cache_path, store_path = inputs
    cache = Cache.load(cache_path)
    queries = Store.open(store_path).select(split="query")
    x = queries.features.astype(np.float64)
    onehot = np.eye(len(cache.classes))[cache.labels]
    affinity = np.exp(-5.0 * (1.0 - x @ cache.keys.T.astype(np.float64))) @ onehot
    logits = 100.0 * x @ cache.text.T.astype(np.float64) + 2.0 * affinity
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :5]

    got = read_output(reference)
    assert list(got.ids) == list(queries.ids) and np.array_equal(got.row_ids, queries.row_ids)
    np.testing.assert_allclose(got.logits, logits, rtol=1e-4, atol=1e-3)
    ranked = -np.sort(-logits, axis=1)
    clear = (ranked[:, :5] - ranked[:, 1:6]).min(axis=1) > 1e-2  # no near-tie in the top 5
    assert clear.mean() > 0.8
    assert np.array_equal(got.classes[clear], order[clear])
    np.testing.assert_allclose(got.probs, np.take_along_axis(probs, got.classes, 1), atol=1e-4)
    written = got.logits.astype(np.float64)
    exact = np.exp(written - written.max(1, keepdims=True))
    exact /= exact.sum(1, keepdims=True)  # softmax of the written logits: float32-exact
    np.testing.assert_allclose(got.probs, np.take_along_axis(exact, got.classes, 1), atol=1e-6)
    assert np.array_equal(got.classes, np.argsort(-got.logits, axis=1, kind="stable")[:, :5])
    assert list(got.names[0]) == [cache.classes[c] for c in got.classes[0]]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_format_round_trips(inputs, reference, tmp_path, fmt):
    out = tmp_path / fmt
    classify_store(*inputs, out, ClassifyOptions(batch_size=64, logits=True, split="query",
                                                 fmt=fmt), show_progress=False)
    assert_same(read_output(out), read_output(reference))
    assert (out / SUCCESS).exists()
    assert json.loads((out / JOURNAL).read_text())["state"] == "complete"


def test_writer_round_trip_with_awkward_strings(tmp_path):
    rng = np.random.default_rng(0)
    names = np.array([["a,b", 'say "hi"'], ["x\ny", "é"]], dtype=object)
    results = Results(
        ids=np.array(['img,1"', "dir/é 2"], dtype=object), row_ids=np.array([5, 9]),
        classes=np.array([[1, 0], [0, 1]]), names=names,
        probs=rng.random((2, 2), dtype=np.float32), logits=None,
    )
    for writer in WRITERS.values():
        path = tmp_path / f"r{writer.suffix}"
        writer.write(results, path)
        assert_same(writer.read(path), results)


def test_refuses_a_store_from_another_encoder(inputs, tmp_path):
    cache_path, _ = inputs
    other = Store.create(tmp_path / "other", dim=64, provenance=Provenance("other", "x", 64))
    proc = subprocess.run([*CLI, "classify", str(cache_path), "--store", str(other.path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "encoder" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_other_parameters_are_refused_unless_overwrite(inputs, reference, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, ClassifyOptions(batch_size=64, split="query"),
                   show_progress=False)
    with pytest.raises(BadInput, match="top_k: 5 -> 3"):
        classify_store(*inputs, out, ClassifyOptions(batch_size=64, split="query", top_k=3),
                       show_progress=False)
    classify_store(*inputs, out, ClassifyOptions(batch_size=64, split="query", top_k=3),
                   overwrite=True, show_progress=False)
    assert read_output(out).classes.shape[1] == 3


def test_journal_version_policy(inputs, tmp_path):
    out = tmp_path / "out"
    classify_store(*inputs, out, ClassifyOptions(batch_size=64, split="query"),
                   show_progress=False)
    journal = json.loads((out / JOURNAL).read_text())
    assert journal["format_version"] == 2 and "checksum" in journal
    rest = json.dumps({k: v for k, v in journal.items() if k != "checksum"}, sort_keys=True)
    assert journal["checksum"] == hashlib.sha256(rest.encode()).hexdigest()  # as v2 wrote it
    expected = read_output(out)
    older = {**journal, "format_version": 1,  # a version 1 journal: no checksums at all
             "parts": [{k: v for k, v in p.items() if k != "sha256"} for p in journal["parts"]]}
    del older["checksum"]
    older["spec"]["options"]["from_a_later_release"] = True  # unknown keys are ignored
    (out / JOURNAL).write_text(json.dumps(older))
    assert_same(read_output(out), expected)
    (out / JOURNAL).write_text(json.dumps({**journal, "format_version": 3}))
    with pytest.raises(NewerFormat, match="newer tipretrieval .classify journal v3.*upgrade"):
        read_output(out)
    (out / JOURNAL).write_text(json.dumps({**older, "parts": "garbage"}))
    with pytest.raises(CorruptData, match="journal.*invalid.*overwrite"):
        read_output(out)
    (out / JOURNAL).write_text("{")
    with pytest.raises(CorruptData, match="journal.json is unreadable"):
        classify_store(*inputs, out, ClassifyOptions(batch_size=64, split="query"),
                       show_progress=False)


def test_new_cache_generation_needs_consent(tmp_path):
    cache_path, store_path = make_inputs(tmp_path, queries_per_class=5)
    out = tmp_path / "out"
    options = ClassifyOptions(batch_size=32, split="query")
    classify_store(cache_path, store_path, out, options, show_progress=False)
    journal = Journal.load(out)
    dropped = asdict(journal.parts.pop(max(journal.parts)))  # as if killed before the last commit
    journal.complete = False
    journal.save(out)
    (out / SUCCESS).unlink()
    Cache.load(cache_path).save()  # another writer moves the cache to a new generation
    with pytest.raises(BadInput, match="cache_generation: 1 -> 2"):
        classify_store(cache_path, store_path, out, options, show_progress=False)
    classify_store(cache_path, store_path, out, options, accept_new_generation=True,
                   show_progress=False)
    parts = json.loads((out / JOURNAL).read_text())["parts"]
    assert [p["cache_generation"] for p in parts if p["index"] == dropped["index"]] == [2]
    assert len(read_output(out)) == 100
    Cache.load(cache_path).save()
    with pytest.raises(BadInput, match="finished job over older inputs"):
        classify_store(cache_path, store_path, out, options, accept_new_generation=True,
                       show_progress=False)


def _committed(out: Path) -> int:
    try:
        return len(json.loads((out / JOURNAL).read_text())["parts"])
    except (OSError, ValueError):
        return 0


def test_kill_9_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    cache_path, store_path = make_inputs(tmp_path, queries_per_class=100)
    args = ["--store", str(store_path), "--split", "query", "--batch-size", "32", "--logits",
            "--quiet"]
    clean = tmp_path / "clean"
    classify_store(cache_path, store_path, clean,
                   ClassifyOptions(batch_size=32, logits=True, split="query"),
                   show_progress=False)
    expected, total = part_bytes(clean), _committed(clean)
    rng = random.Random(0)
    interrupted = 0
    for run in range(10):
        out = tmp_path / f"run{run}"
        proc = subprocess.Popen([*CLI, "classify", str(cache_path), "--out", str(out), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = rng.randrange(total)  # parts committed before the kill, whatever the speed
        while not (out / JOURNAL).exists() or _committed(out) < target:
            assert proc.poll() is None
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        interrupted += 0 < _committed(out) < total
        classify_store(cache_path, store_path, out,
                       ClassifyOptions(batch_size=32, logits=True, split="query"),
                       show_progress=False)
        assert part_bytes(out) == expected
        assert not list(out.glob(".*.tmp"))
        got = read_output(out)
        assert len(set(got.ids)) == len(got.ids) == 2000
    assert interrupted >= 5  # most kills landed mid-job, not before or after it
