"""Caches are never trusted unchecked: a unique id per build, sha256 of every file, validated
alpha/beta and fields, the cache's own store only, one-line errors that change nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from test_classify_integrity import cli, read_only, tree

from tipretrieval.cache.cache import Cache
from tipretrieval.cache.files import META
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.encode.text import TextClassifier
from tipretrieval.errors import BadInput, CorruptData
from tipretrieval.jobs.classify import ClassifyOptions, Journal, classify_store, read_output
from tipretrieval.store.store import Store

OPTIONS = ClassifyOptions(batch_size=32, split="query")


@pytest.fixture(scope="module")
def data():
    return make_dataset(10, 64, seed=5)


@pytest.fixture(scope="module")
def store(data, tmp_path_factory) -> Store:
    sizes = SplitSizes(train=8, val=4, test=2, query=6, views=0)
    return write_store(tmp_path_factory.mktemp("s") / "store", data, sizes)


@pytest.fixture
def cache_dir(store, data, tmp_path) -> Path:
    cache = Cache.build(store, 4, text=data.text)
    cache.set_params(2.0, 5.0)
    return cache.save(tmp_path / "cache")


def meta(path: Path) -> dict:
    return json.loads((path / META).read_text())


# --- 2: a rebuilt cache is another cache -------------------------------------------------------
def test_cache_id_is_made_at_build_and_kept_by_every_generation(store, data, cache_dir):
    first = meta(cache_dir)["cache_id"]
    assert len(first) == 32 and int(first, 16) >= 0
    cli("tune", cache_dir, "--store", store.path, "--steps", 5, 5, code=0)
    cli("remove-shots", cache_dir, "--row-ids", int(Cache.load(cache_dir).row_ids[0]), code=0)
    assert meta(cache_dir)["generation"] == 3 and meta(cache_dir)["cache_id"] == first
    other = Cache.build(store, 4, text=data.text).save(cache_dir.parent / "again")
    assert meta(other)["cache_id"] != first  # the same build again is another cache
    copy = Cache.load(cache_dir).save(cache_dir.parent / "copy")
    assert meta(copy)["cache_id"] not in (first, meta(other)["cache_id"])


@pytest.mark.parametrize("finished", [True, False])
def test_job_over_a_rebuilt_cache_is_refused(store, data, cache_dir, tmp_path, finished):
    out = tmp_path / "out"
    classify_store(cache_dir, store.path, out, OPTIONS, show_progress=False)
    if not finished:  # as if killed after the first part
        journal = Journal.load(out)
        journal.parts = {min(journal.parts): journal.parts[min(journal.parts)]}
        journal.complete = False
        journal.save(out)
    before = tree(out)
    shutil.rmtree(cache_dir)  # the audit's `rm -rf C; build --shots 1 --seed 5 --out C`
    Cache.build(store, 1, seed=5, text=data.text).save(cache_dir)
    assert meta(cache_dir)["generation"] == 1  # path and generation as before: not enough
    err = cli("classify", cache_dir, "--store", store.path, "--split", "query",
              "--batch-size", 32, "--out", out, code=2)
    assert "over another cache" in err and "--overwrite" in err and "--out" in err
    assert tree(out) == before
    if finished:  # nor is the report drawn with the rebuilt cache's shots
        err = cli("report", out, "--html", tmp_path / "html", "--store", store.path, code=2)
        assert "is not the one" in err and "classified with" in err
    classify_store(cache_dir, store.path, out, OPTIONS, overwrite=True, show_progress=False)
    assert np.array_equal(read_output(out).classes[:, 0],
                          Cache.load(cache_dir).classify(
                              store.select(split="query").features).classes[:, 0])


# --- 3, 5, 21: add-shots / remove-shots -------------------------------------------------------
def test_add_or_remove_with_another_store_is_refused(store, data, cache_dir, tmp_path):
    other = write_store(tmp_path / "other", data, SplitSizes(train=8, val=1, test=1, query=1,
                                                                views=0))
    before = tree(cache_dir)
    some_id = other.select(split="train").ids[3]
    for command in ("add-shots", "remove-shots"):
        err = cli(command, cache_dir, "--store", other.path, "--ids", some_id, code=2)
        assert "is not the store this cache was built from" in err
    assert tree(cache_dir) == before


def test_empty_id_lists_add_nothing(cache_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    before = tree(cache_dir)
    for args in (["--ids-file", tmp_path / "empty.txt"], ["--ids", ""], ["--ids", ",,"]):
        err = cli("add-shots", cache_dir, "--split", "val", *args, code=2)
        assert "name no id" in err
        cli("remove-shots", cache_dir, *args, code=2)
    assert tree(cache_dir) == before


def test_non_utf8_ids_file_is_one_line(cache_dir, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9/1\n".encode("latin-1"))
    before = tree(cache_dir)
    for command in ("add-shots", "remove-shots"):
        err = cli(command, cache_dir, "--ids-file", tmp_path / "latin1.txt", code=2)
        assert "is not UTF-8 text" in err
    assert tree(cache_dir) == before


def test_removing_a_non_key_names_no_missing_command(store, cache_dir):
    from tipretrieval.cli import main

    cache = Cache.load(cache_dir)
    stranger = next(i for i, r in zip(store.select(split="train").ids,
                                      store.select(split="train").row_ids, strict=True)
                    if r not in cache.row_ids)
    err = cli("remove-shots", cache_dir, "--ids", stranger, code=2)
    assert "are not keys of this cache" in err and "row_ids" in err
    named = [w for w in err.replace("`", " ").split() if w in ("eval/inspect", "inspect")]
    assert not named and "inspect" not in main.list_commands(click.Context(main))


# --- 7: checksums and parameters ---------------------------------------------------------------
def test_every_file_has_its_sha256_and_a_flip_is_named(cache_dir):
    import hashlib

    files = meta(cache_dir)["files"]
    names = {*files["segments"], files["index"], files["text"], files["gda"]}
    assert files["sha256"] == {n: hashlib.sha256((cache_dir / n).read_bytes()).hexdigest()
                               for n in names}
    text = cache_dir / files["text"]
    flipped = bytearray(text.read_bytes())
    flipped[-5] ^= 0x10  # one bit of one text-classifier weight
    text.write_bytes(bytes(flipped))
    with pytest.raises(CorruptData, match=f"damaged {files['text']}"):
        Cache.load(cache_dir)
    err = cli("eval", cache_dir, "--store", cache_dir.parent / "nowhere", code=2)
    assert files["text"] in err


@pytest.mark.parametrize("edit, message", [
    ({"beta": -50.0}, "beta must be a finite number > 0"),
    ({"alpha": -0.5}, "alpha must be a finite number >= 0"),
    ({"alpha": "high"}, "cache field alpha is 'high'"),
    ({"classes": ["a"]}, "key labels must be class indices"),
    ({"method": "magic"}, "method 'magic'"),
])
def test_bad_cache_json_values_are_one_line_corrupt_data(store, cache_dir, edit, message):
    (cache_dir / META).write_text(json.dumps({**meta(cache_dir), **edit}))
    before = tree(cache_dir)
    with pytest.raises(CorruptData, match=message):
        Cache.load(cache_dir)
    cli("classify", cache_dir, "--store", store.path, "--out", cache_dir.parent / "o", code=2)
    assert tree(cache_dir) == before and not (cache_dir.parent / "o").exists()


def test_cache_json_that_is_not_an_object_is_one_line(cache_dir):
    (cache_dir / META).write_text("[1, 2]")
    err = cli("tune", cache_dir, "--store", cache_dir, code=2)
    assert "cache.json" in err and "unreadable" in err


def test_alpha_beta_and_tune_grid_are_validated(store, cache_dir):
    cache = Cache.load(cache_dir)
    for alpha, beta in ((-1.0, 1.0), (1.0, 0.0), (float("nan"), 1.0), (1.0, float("inf"))):
        with pytest.raises(BadInput, match="alpha|beta"):
            cache.set_params(alpha, beta)
    before = tree(cache_dir)
    err = cli("tune", cache_dir, "--store", store.path, "--scale", -1, -1, code=2)
    assert "scale (-1.0, -1.0) must be two finite numbers > 0" in err
    assert tree(cache_dir) == before


# --- 15: a deleted index ---------------------------------------------------------------------
def test_deleted_index_exact_mode_works_retrieval_is_one_line(store, cache_dir, tmp_path):
    expected = Cache.load(cache_dir).logits(store.select(split="query").features)
    (cache_dir / meta(cache_dir)["files"]["index"]).unlink()
    cache = Cache.load(cache_dir)
    np.testing.assert_array_equal(cache.logits(store.select(split="query").features), expected)
    with pytest.raises(CorruptData, match="lacks index-g1.faiss"):
        cache.logits(store.select(split="query").features, mode="retrieval", k=4)
    cli("classify", cache_dir, "--store", store.path, "--split", "query", "--out",
        tmp_path / "exact", "--quiet", code=0)
    err = cli("classify", cache_dir, "--store", store.path, "--mode", "retrieval",
              "--out", tmp_path / "retrieval", code=2)
    assert "lacks index-g1.faiss" in err
    before = tree(cache_dir)
    cli("remove-shots", cache_dir, "--row-ids", int(cache.row_ids[0]), code=2)
    assert tree(cache_dir) == before


# --- 17: no permission ---------------------------------------------------------------------
def test_unwritable_cache_is_one_line_exit_1(store, cache_dir):
    row = int(Cache.load(cache_dir).row_ids[0])
    before = tree(cache_dir)
    with read_only(cache_dir):
        for args in (["remove-shots", cache_dir, "--row-ids", row],
                     ["add-shots", cache_dir, "--split", "val"],
                     ["tune", cache_dir, "--store", store.path, "--steps", 3, 3]):
            err = cli(*args, code=1)
            assert f"cannot write cache {cache_dir}" in err
    assert tree(cache_dir) == before


# --- 23: a failed build leaves nothing ----------------------------------------------------------
def test_failed_build_leaves_no_files(store, data, tmp_path):
    text = tmp_path / "text.npz"
    TextClassifier(data.text, data.classes, "synthetic", store.provenance).save(text)
    args = ["build", store.path, "--shots", 2, "--text", text, "--index", "IVF4096,Flat"]
    err = cli(*args, "--out", tmp_path / "new", code=2)  # fails after writing keys and text
    assert "cannot train index" in err and not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    cli(*args, "--out", existing, code=2)
    assert sorted(p.name for p in existing.iterdir()) == [".cache.lock", "notes.txt"]


def test_a_file_dropped_from_cache_json_is_corrupt_not_ignored(cache_dir):
    doc = meta(cache_dir)
    doc["files"]["text"] = None  # found by the property test: the text classifier vanished
    (cache_dir / META).write_text(json.dumps(doc))
    with pytest.raises(CorruptData, match="sha256 of"):
        Cache.load(cache_dir)
