"""Store search: the persisted index against brute-force numpy, filters, appends, text/image."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tipretrieval.cli import main
from tipretrieval.demo.synthetic import SplitSizes, make_dataset, write_store
from tipretrieval.encode import load_encoder, scan_source
from tipretrieval.encode.extract import ExtractOptions, extract
from tipretrieval.errors import BadInput
from tipretrieval.jobs.search import Query, StoreIndex, choose_index, search
from tipretrieval.jobs.search.choose import memory_bytes
from tipretrieval.store.store import Store


def brute(store: Store, x: np.ndarray, k: int, *, split=None, label=None):
    """Top-k row ids and sims of x over the stored features, by numpy (float64)."""
    rows = store.select(split=split, labels=label)
    sims = rows.features.astype(np.float64) @ x.astype(np.float64)
    order = np.argsort(-sims, kind="stable")[:k]
    return rows.row_ids[order], sims[order]


@pytest.fixture()
def store(tmp_path) -> Store:
    data = make_dataset(12, 32, seed=5)
    return write_store(tmp_path / "store", data, SplitSizes(train=20, val=5, test=10, query=20,
                                                           views=0))


def test_flat_search_equals_numpy_with_filters(store):
    index = StoreIndex.ensure(store, show_progress=False)
    assert index.info.spec == "Flat" and index.info.rows == len(store)  # auto, < 1,000 rows
    rng = np.random.default_rng(0)
    for label, split in [(None, None), (3, None), (None, "query"), (7, "train")]:
        x = rng.standard_normal(32).astype(np.float32)
        x /= np.linalg.norm(x)
        want_ids, want_sims = brute(store, x, 10, split=split, label=label)
        sims, ids = index.search(x[None], 10, label=label, split=split)
        assert ids[0].tolist() == want_ids.tolist()
        np.testing.assert_allclose(sims[0], want_sims, atol=1e-5)


def test_search_by_row_returns_the_row_first_and_describes_hits(store):
    StoreIndex.ensure(store, show_progress=False)
    row = store.select(split="test").take(np.array([3]))
    hits = search(store.path, Query(row=str(int(row.row_ids[0]))), k=5)
    want_ids, want_sims = brute(store, row.features[0], 5)
    assert hits.row_ids.tolist() == want_ids.tolist()
    assert hits.ids[0] == row.ids[0] and hits.splits[0] == "test"
    assert hits.labels[0] == store.classes[row.labels[0]]
    np.testing.assert_allclose(hits.sims, want_sims, atol=1e-5)
    by_id = search(store.path, Query(row=row.ids[0]), k=5, label=store.classes[row.labels[0]])
    assert set(by_id.labels) == {store.classes[row.labels[0]]}


def test_appends_extend_the_index_with_new_rows_only(store, tmp_path):
    index = StoreIndex.ensure(store, spec="IVF4,Flat", params="nprobe=4", show_progress=False)
    def centroids(built: StoreIndex) -> np.ndarray:
        inner = faiss.read_index(str(built.path / f"index-{built.info.number}.faiss"))
        return faiss.extract_index_ivf(inner.index).quantizer.reconstruct_n(0, 4)

    before = centroids(index)
    more = make_dataset(12, 32, seed=6).split("query", 5, labelled=False)
    more.ids = np.array([f"new/{i}" for i in range(len(more))], dtype=object)
    new_ids = store.append(more)
    again = StoreIndex.ensure(store, show_progress=False)  # 'auto' keeps the saved spec
    assert again.info.spec == "IVF4,Flat" and again.info.rows == len(store.refresh())
    assert again.info.covered == int(new_ids[-1]) + 1 and again.info.number == 2
    np.testing.assert_array_equal(centroids(again), before)  # not retrained
    x = store.refresh().select(row_ids=new_ids[:1]).features[0]
    hits = search(store.path, Query(row=str(int(new_ids[0]))), k=8)
    want_ids, _ = brute(store.refresh(), x, 8)
    assert hits.row_ids.tolist() == want_ids.tolist()  # nprobe = all lists: exact
    assert sorted((again.path).glob("index-*.faiss")) == [again.path / "index-2.faiss"]
    StoreIndex.ensure(store, params="nprobe=2", show_progress=False)
    assert StoreIndex.load(store.path).info.params == "nprobe=2"  # kept without new rows


def test_split_index_and_missing_index(store):
    with pytest.raises(BadInput, match=r"`StoreIndex.ensure\(\)`"):
        search(store.path, Query(row="0"), k=3)
    StoreIndex.ensure(store, split="query", show_progress=False)
    hits = search(store.path, Query(row="0"), k=4, split="query")
    assert set(hits.splits) == {"query"} and len(hits) == 4
    with pytest.raises(BadInput, match="no class"):
        search(store.path, Query(row="0"), k=3, split="query", label="nope")
    with pytest.raises(BadInput, match="exactly one query"):
        Query(text="a", row="1")


def test_auto_follows_autofaiss_rule():
    assert choose_index(999, 512) == "Flat"
    assert choose_index(5_000, 512) == "HNSW15"
    assert choose_index(1_000_000, 512, "16G") == "HNSW32"
    assert choose_index(500_000, 512, "1.2G") == "HNSW32"  # M = (1.2G / 2M - 512) / 2 = 66
    assert choose_index(500_000, 512, "1.04e9") == "IVF2048,Flat"  # 2**round(log2(4 sqrt n))
    assert choose_index(10_000_000, 512, "16G") == "OPQ256_768,IVF65536_HNSW32,PQ256x8"
    assert choose_index(5_000_000, 512, "1G") == "OPQ128_640,IVF16384_HNSW32,PQ128x8"
    assert memory_bytes("512MB") == 512 << 20
    with pytest.raises(BadInput, match="not a size"):
        memory_bytes("lots")


def test_cli_text_and_image_search(tiny_clip_config, tiny_checkpoint, image_folder, tmp_path):
    folder = image_folder(tmp_path / "imgs")
    encoder = load_encoder(str(tiny_clip_config), checkpoint=tiny_checkpoint, device="cpu")
    extract(scan_source(folder), tmp_path / "s", encoder,
            ExtractOptions(split="val", views=0, workers=0, progress=False))
    runner = CliRunner()
    res = runner.invoke(main, ["index", str(tmp_path / "s"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "6 rows in Flat index" in res.output
    common = ["--model", str(tiny_clip_config), "--checkpoint", str(tiny_checkpoint),
              "--device", "cpu", "-k", "3"]
    res = runner.invoke(main, ["search", str(tmp_path / "s"), "--image",
                               str(folder / "cat" / "img2.png"), "--json", *common])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert hits[0]["id"] == "cat/img2.png" and hits[0]["similarity"] > 0.999
    assert hits[0]["label"] == "cat" and hits[0]["split"] == "val"
    store = Store.open(tmp_path / "s")
    want, _ = brute(store, encoder.encode_text(["a photo of a dog"])[0], 3)
    out = tmp_path / "hits.parquet"
    res = runner.invoke(main, ["search", str(tmp_path / "s"), "--text", "a photo of a dog",
                               "--out", str(out), *common])
    assert res.exit_code == 0, res.output
    assert pq.read_table(out)["row_id"].to_pylist() == want.tolist()
    res = runner.invoke(main, ["search", str(tmp_path / "s"), "--text", "x", "--id", "1"])
    assert res.exit_code == 2 and "exactly one query" in res.output
