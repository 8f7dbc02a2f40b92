"""KeyIndex: ids, add/remove, save/load, approximate specs, GPU paths when present."""

import faiss
import numpy as np
import pytest

from tipretrieval.errors import BadInput, CorruptData
from tipretrieval.method.index import KeyIndex, gpu_count


def unit(a):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    keys = unit(rng.standard_normal((400, 16)))
    ids = rng.permutation(10_000)[:400].astype(np.int64) + 1_000_000_000_000
    queries = unit(rng.standard_normal((25, 16)))
    return keys, ids, queries


def brute(keys, ids, q, k):
    sims = q @ keys.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), ids[order]


def test_flat_search_equals_brute_force(data):
    keys, ids, q = data
    index = KeyIndex.build(keys, ids, use_gpu=False)
    sims, got = index.search(q, 7)
    want_sims, want_ids = brute(keys, ids, q, 7)
    assert got.dtype == np.int64 and index.ntotal == 400
    np.testing.assert_array_equal(got, want_ids)
    np.testing.assert_allclose(sims, want_sims, rtol=1e-5)
    _, padded = index.search(q[:2], 450)
    assert (padded[:, 400:] == -1).all() and set(padded[0, :400]) == set(ids)


def test_add_remove_save_load(data, tmp_path):
    keys, ids, q = data
    index = KeyIndex.build(keys[:300], ids[:300], use_gpu=False)
    index.add(keys[300:], ids[300:])
    assert index.remove(ids[:50]) == 50
    assert index.remove(ids[:50]) == 0
    _, want = brute(keys[50:], ids[50:], q, 5)
    np.testing.assert_array_equal(index.search(q, 5)[1], want)
    index.save(tmp_path / "keys.faiss")
    loaded = KeyIndex.load(tmp_path / "keys.faiss", use_gpu=False)
    assert loaded.ntotal == 350 and sorted(loaded.ids()) == sorted(ids[50:])
    np.testing.assert_array_equal(loaded.search(q, 5)[1], want)
    with pytest.raises(BadInput, match="already indexed"):
        loaded.add(keys[60:61], ids[60:61])


@pytest.mark.parametrize("spec", ["HNSW16", "IVF4,Flat"])
def test_approximate_specs_remove_and_find_themselves(data, spec):
    keys, ids, _ = data
    index = KeyIndex.build(keys, ids, spec=spec, use_gpu=False)
    if spec.startswith("IVF"):
        index.set_params("nprobe=4")
    assert index.remove(ids[:10]) == 10 and index.ntotal == 390
    _, got = index.search(keys[10:40], 1)
    assert np.mean(got[:, 0] == ids[10:40]) > 0.9
    assert not np.isin(index.search(keys[:10], 3)[1], ids[:10]).any()


def test_bad_specs_and_inputs(data, tmp_path):
    keys, ids, q = data
    with pytest.raises(BadInput, match="factory string"):
        KeyIndex.build(keys, ids, spec="NoSuchIndex")
    with pytest.raises(BadInput, match="not unique"):
        KeyIndex.build(keys[:2], [5, 5])
    with pytest.raises(BadInput, match="expected"):
        KeyIndex.build(keys, ids, use_gpu=False).search(q[:, :3], 1)
    (tmp_path / "junk.faiss").write_bytes(b"not an index")
    with pytest.raises(CorruptData):
        KeyIndex.load(tmp_path / "junk.faiss")


@pytest.mark.skipif(gpu_count() == 0, reason="FAISS sees no GPU")
def test_gpu_index_matches_cpu(data):
    keys, ids, q = data
    cpu = KeyIndex.build(keys, ids, use_gpu=False)
    gpu = KeyIndex.build(keys, ids, use_gpu=True)
    np.testing.assert_array_equal(gpu.search(q, 5)[1], cpu.search(q, 5)[1])
    np.testing.assert_array_equal(gpu.search(q, 3000)[1][:, :400], cpu.search(q, 400)[1])
    gpu.remove(ids[:20])
    cpu.remove(ids[:20])
    np.testing.assert_array_equal(gpu.search(q, 5)[1], cpu.search(q, 5)[1])


def test_gpu_request_without_gpu_is_refused(data):
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    keys, ids, _ = data
    with pytest.raises(BadInput, match="no GPU"):
        KeyIndex.build(keys, ids, use_gpu=True)


def _faiss_search(index: KeyIndex, q: np.ndarray, k: int):
    """FAISS's own scan of the CPU index (the reference for the list-major search)."""
    sims, ids = index._cpu.search(np.ascontiguousarray(q), k)
    return sims, ids


@pytest.mark.parametrize("k", [5, 120, 900])
def test_list_major_ivf_search_equals_faiss(k):
    """Batches on an IVF-Flat index are answered list-major (`ivf_scan`): the same keys with
    the same scores as FAISS's scan, padding (-1, -FLT_MAX) included; and after an add or a
    removal the lists are read afresh."""
    rng = np.random.default_rng(5)
    keys = unit(rng.standard_normal((3000, 24)))
    ids = rng.permutation(10**6)[:3000].astype(np.int64)
    q = unit(rng.standard_normal((300, 24)))
    index = KeyIndex.build(keys[:2500], ids[:2500], spec="IVF16,Flat", use_gpu=False)
    index.set_params("nprobe=3")
    for step in ("built", "added", "removed"):
        if step == "added":
            index.add(keys[2500:], ids[2500:])
        if step == "removed":
            index.remove(ids[:700])
        sims, got = index.search(q, k)
        want_sims, want = _faiss_search(index, q, k)
        assert got.shape == (300, k) and got.dtype == np.int64 and sims.dtype == np.float32
        np.testing.assert_allclose(sims, want_sims, rtol=1e-5, atol=1e-6)
        assert [sorted(a) for a in got.tolist()] == [sorted(a) for a in want.tolist()]
        assert np.all(np.diff(sims, axis=1) <= 0)
        assert (got == -1).sum() == (want == -1).sum()
    assert (got == -1).any() == (k == 900) and not np.isin(got, ids[:700]).any()
    assert np.isin(ids[2500:], got).any()


def test_exact_sims_only_for_uncompressed_keys(data):
    keys, ids, _ = data
    assert KeyIndex.build(keys, ids, "Flat", use_gpu=False).exact_sims
    assert KeyIndex.build(keys, ids, "IVF4,Flat", use_gpu=False).exact_sims
    assert not KeyIndex.build(keys, ids, "IVF4,SQ8", use_gpu=False).exact_sims
    assert not KeyIndex.build(keys, ids, "HNSW16", use_gpu=False).exact_sims
