"""`tipretrieval import` / `info` through the CLI: every source format and every bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tipretrieval.cli import main
from tipretrieval.errors import CorruptData
from tipretrieval.store.manifest import FORMAT_VERSION
from tipretrieval.store.store import Store

DIM = 8
CLASSES = ["ant", "bee", "cat"]


def features(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Unnormalised random float32 features (norms far from 1)."""
    return (np.random.default_rng(seed).standard_normal((n, dim)) * 3).astype(np.float32)


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def write_npz(path: Path, n: int = 40, seed: int = 0, **extra) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"features": features(n, seed), "labels": rng.choice(CLASSES, n),
              "ids": np.array([f"img/{seed}/{i}.jpg" for i in range(n)]),
              "classes": np.array(CLASSES)}
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of a directory tree (except the lock file) and its bytes."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_import_npz_with_class_names_then_info(tmp_path):
    arrays = write_npz(tmp_path / "a.npz")
    store_dir = tmp_path / "store"
    res = cli("import", tmp_path / "a.npz", "--store", store_dir, "--encoder", "ViT-B-32",
              "--weights", "openai")
    assert res.exit_code == 0, res.output
    assert "imported 40 rows into new store" in res.stdout
    store = Store.open(store_dir)
    rows = store.select()
    assert store.classes == CLASSES and store.provenance.encoder == "ViT-B-32"
    np.testing.assert_array_equal(rows.ids, arrays["ids"])
    np.testing.assert_array_equal(rows.labels, [CLASSES.index(c) for c in arrays["labels"]])
    assert set(rows.splits) == {"train"}
    np.testing.assert_allclose(rows.features, normalised(arrays["features"]), atol=1e-3)
    info = json.loads(cli("info", store_dir, "--json", "--verify").stdout)
    counts = {c: int((arrays["labels"] == c).sum()) for c in CLASSES}
    assert {c["name"]: c["rows"] for c in info["classes"]} == counts
    assert (info["rows"], info["dim"], info["dtype"], info["verified"]) == \
        (40, DIM, "float16", True)
    assert info["splits"] == {"train": 40} and len(info["shards"]) == 1
    assert info["nbytes"] == (store_dir / "shards" / info["shards"][0]["name"]).stat().st_size
    text = cli("info", store_dir, "--verify").stdout
    assert "rows        40" in text and "all 1 shard checksums match" in text


def test_import_npy_with_id_label_and_class_files(tmp_path):
    x = features(6, 1)
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(f"q{i}" for i in range(6)) + "\n")
    (tmp_path / "labels.txt").write_text("0\n2\n-1\n1\n1\n0\n")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    res = cli("import", tmp_path / "f.npy", "--store", tmp_path / "s", "--ids",
              tmp_path / "ids.txt", "--labels", tmp_path / "labels.txt", "--classes",
              tmp_path / "classes.txt", "--split", "query", "--dtype", "float32")
    assert res.exit_code == 0, res.output
    rows = Store.open(tmp_path / "s").select()
    np.testing.assert_array_equal(rows.labels, [0, 2, -1, 1, 1, 0])
    np.testing.assert_array_equal(rows.ids, [f"q{i}" for i in range(6)])
    np.testing.assert_allclose(rows.features, normalised(x), rtol=1e-6)
    assert set(rows.splits) == {"query"}
    np.save(tmp_path / "g.npy", features(3, 2))
    assert cli("import", tmp_path / "g.npy", "--store", tmp_path / "s").exit_code == 0
    np.testing.assert_array_equal(Store.open(tmp_path / "s").select().ids[6:],
                                  ["g.npy:0", "g.npy:1", "g.npy:2"])


def test_import_pt_and_h5_with_views_and_renamed_keys(tmp_path):
    x, v = features(5, 3), features(15, 4).reshape(5, 3, DIM)
    torch.save({"emb": torch.from_numpy(x), "labels": torch.tensor([0, 1, 2, 0, 1]),
                "ids": [f"p{i}" for i in range(5)], "classes": CLASSES,
                "encoder": "RN50", "weights": "openai"}, tmp_path / "a.pt")
    res = cli("import", tmp_path / "a.pt", "--store", tmp_path / "s", "--key", "features=emb")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.attrs["encoder"] = "RN50"
        f.attrs["weights"] = "openai"
        f["views"] = v
        f["labels"] = np.array([b"cat", b"ant", b"bee", b"cat", b"cat"])
        f["ids"] = np.array([b"h0", b"h1", b"h2", b"h3", b"h4"])
        f["split"] = np.array([b"val"] * 5)
        f["sources"] = np.array([f"/src/{i}.jpg".encode() for i in range(5)])
    res = cli("import", tmp_path / "b.h5", "--store", tmp_path / "s")
    assert res.exit_code == 0, res.output
    store = Store.open(tmp_path / "s")
    assert store.provenance.encoder == "RN50" and len(store) == 10
    first = store.select(split="train")
    np.testing.assert_allclose(first.features, normalised(x), atol=1e-3)
    second = store.select(split="val", with_views=True)
    np.testing.assert_array_equal(second.labels, [2, 0, 1, 2, 2])
    np.testing.assert_array_equal(second.sources, [f"/src/{i}.jpg" for i in range(5)])
    np.testing.assert_allclose(second.views, normalised(v), atol=1e-3)
    key = normalised(normalised(v).mean(axis=1))  # key = renormalised mean of the views
    np.testing.assert_allclose(second.features, key, atol=1e-3)


def _with(path: Path, **changes) -> Path:
    """Write a 10-row npz source (ids n0..n9) with `changes` applied to its arrays."""
    write_npz(path, n=10, seed=9, **{"ids": np.array([f"n{i}" for i in range(10)]), **changes})
    return path


def _nan() -> np.ndarray:
    x = features(10, 9)
    x[4, 2] = np.nan
    return x


def _inf() -> np.ndarray:
    x = features(10, 9)
    x[7, 0] = -np.inf
    return x


# (description, source-builder, extra CLI args, expected message)
BAD = [
    ("wrong dim", lambda p: _with(p, features=features(10, 9, dim=DIM + 2)), [],
     "holds dim 8"),
    ("nan", lambda p: _with(p, features=_nan()), [], "contain NaN or inf"),
    ("inf", lambda p: _with(p, features=_inf()), [], "contain NaN or inf"),
    ("unnormalised refused", lambda p: _with(p), ["--require-normalized"],
     "not L2-normalised"),
    ("label out of range", lambda p: _with(p, labels=np.arange(10) - 1), [],
     r"outside -1\.\.2"),
    ("unknown class name", lambda p: _with(p, labels=np.array(["ant"] * 9 + ["yak"])), [],
     "'yak'"),
    ("duplicate id in batch", lambda p: _with(p, ids=np.array(["d"] * 2 + [f"n{i}" for i in
                                                                range(8)])), [],
     "occur more than once"),
    ("duplicate id in store", lambda p: _with(p, ids=np.array([f"s{i}" for i in range(10)])),
     [], "already exist in store"),
    ("provenance mismatch", lambda p: _with(p), ["--encoder", "RN101", "--weights", "openai"],
     "come from encoder RN101"),
    ("classes reordered", lambda p: _with(p, classes=np.array(["bee", "ant", "cat"])), [],
     "differs from the store's vocabulary"),
    ("no features", lambda p: _with(p), ["--key", "features=nothing"], "has no 'nothing'"),
    ("integer features", lambda p: _with(p, features=np.ones((10, DIM), dtype=np.int64)), [],
     "give floating-point features"),
]


@pytest.mark.parametrize("name, build, args, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_and_leaves_the_store_unchanged(tmp_path, name, build, args,
                                                          message):
    store_dir = tmp_path / "store"
    _with(tmp_path / "first.npz", ids=np.array([f"s{i}" for i in range(10)]))
    assert cli("import", tmp_path / "first.npz", "--store", store_dir, "--encoder",
               "ViT-B-32", "--weights", "openai").exit_code == 0
    before = snapshot(store_dir)
    res = cli("import", build(tmp_path / "bad.npz"), "--store", store_dir, *args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and ": " in lines[0][7:]
    assert re.search(message, lines[0]), lines[0]
    assert snapshot(store_dir) == before


def test_failed_first_import_creates_no_store(tmp_path):
    res = cli("import", _with(tmp_path / "bad.npz", features=_nan()), "--store",
              tmp_path / "new")
    assert res.exit_code == 2 and "NaN" in res.stderr
    assert not (tmp_path / "new").exists()


def test_not_a_store_and_newer_format_exit_2(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    res = cli("info", tmp_path / "junk")
    assert res.exit_code == 2 and "is not a tipretrieval store" in res.stderr
    res = cli("import", _with(tmp_path / "a.npz"), "--store", tmp_path / "junk")
    assert res.exit_code == 2 and "is not empty" in res.stderr
    assert cli("import", tmp_path / "a.npz", "--store", tmp_path / "s").exit_code == 0
    manifest = tmp_path / "s" / "manifest.json"
    manifest.write_text(manifest.read_text().replace(f'"format_version": {FORMAT_VERSION}',
                                                     f'"format_version": {FORMAT_VERSION + 1}'))
    before = snapshot(tmp_path / "s")
    for args in (("info", tmp_path / "s"),
                 ("import", _with(tmp_path / "b.npz", ids=np.arange(10)), "--store",
                  tmp_path / "s")):
        res = cli(*args)
        assert res.exit_code == 2
        assert (f"(store manifest v{FORMAT_VERSION + 1}; this one reads up to "
                f"v{FORMAT_VERSION}): upgrade") in res.stderr
    assert snapshot(tmp_path / "s") == before


def test_info_verify_names_corrupt_truncated_and_missing_shards(tmp_path):
    assert cli("import", _with(tmp_path / "a.npz"), "--store", tmp_path / "s").exit_code == 0
    shard = next((tmp_path / "s" / "shards").iterdir())
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01
    shard.write_bytes(bytes(data))
    res = cli("info", tmp_path / "s", "--verify")
    assert res.exit_code == CorruptData.exit_code
    assert f"shard {shard.name} fails its xxh3_128 checksum" in res.stderr
    shard.write_bytes(bytes(data[:1000]))
    assert "is truncated" in cli("info", tmp_path / "s", "--verify").stderr
    shard.unlink()
    assert "is missing" in cli("info", tmp_path / "s", "--verify").stderr


def test_info_verify_and_import_ignore_an_extract_report_in_the_store(tmp_path):
    assert cli("import", _with(tmp_path / "a.npz"), "--store", tmp_path / "s").exit_code == 0
    report = tmp_path / "s" / "extract-report-train.json"
    report.write_text('{"unreadable": []}\n')
    res = cli("info", tmp_path / "s", "--verify", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verified"] is True
    res = cli("import", _with(tmp_path / "b.npz", ids=np.array([f"b{i}" for i in range(10)])),
              "--store", tmp_path / "s")
    assert res.exit_code == 0, res.output
    assert report.read_text() == '{"unreadable": []}\n' and len(Store.open(tmp_path / "s")) == 20
