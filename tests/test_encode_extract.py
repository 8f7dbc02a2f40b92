"""Image sources and extraction into the store (tiny random-weight model, tiny images)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tipretrieval.encode.extract import ExtractOptions, extract
from tipretrieval.encode.sources import scan_source
from tipretrieval.encode.transforms import decode_image, image_seed, make_views, view_pixels
from tipretrieval.errors import BadInput
from tipretrieval.store.store import Store

CLASSES = ("cat", "dog_breed")  # the class folders of the `image_folder` fixture
F16_TOL = 2e-3  # the store keeps float16


@pytest.fixture
def folder(image_folder, tmp_path):
    return image_folder(tmp_path / "imgs")


def _opts(**kw):
    return ExtractOptions(**({"workers": 0, "batch_size": 4, "chunk": 4, "views": 3,
                              "progress": False} | kw))


def _by_id(rows):
    order = np.argsort(rows.ids.astype(str))
    return rows.take(order)


def _plain_features(encoder, paths):
    """The reference pipeline: PIL + open_clip eval transform + encode_image + L2."""
    x = torch.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        f = encoder.model.encode_image(x)
    return (f / f.norm(dim=-1, keepdim=True)).numpy()


def test_extract_train_views_keys_labels_and_report(tiny_encoder, folder, tmp_path):
    report_path = tmp_path / "report.json"
    report = extract(scan_source(folder), tmp_path / "store", tiny_encoder, _opts(),
                     report_path=report_path)
    assert (report.total, report.encoded, report.already_stored) == (8, 6, 0)
    assert {b.id for b in report.bad} == {"cat/broken.jpg", "dog_breed/notes.txt"}
    saved = json.loads(report_path.read_text())
    assert saved["bad_count"] == 2 and saved["encoded"] == 6

    store = Store.open(tmp_path / "store")
    assert store.classes == list(CLASSES)
    assert store.provenance == tiny_encoder.provenance
    rows = _by_id(store.select(with_views=True))
    assert list(rows.ids) == [f"{c}/img{i}.{e}" for c in CLASSES
                              for i, e in enumerate(["png", "jpg", "png"])]
    assert list(rows.labels) == [0, 0, 0, 1, 1, 1]
    assert set(rows.splits) == {"train"}
    assert rows.views.shape == (6, 3, 32)
    mean = rows.views.mean(axis=1)
    assert np.abs(rows.features - mean / np.linalg.norm(mean, axis=1, keepdims=True)).max() \
        < F16_TOL
    # the views are exactly the seeded augmentations of each image, encoded
    item = rows.ids[4]
    views = make_views(decode_image(folder / item), view_pixels(tiny_encoder.preprocess_cfg),
                       3, image_seed(0, item))
    assert views.dtype == torch.uint8
    cfg = tiny_encoder.preprocess_cfg
    mean, std = (torch.tensor(cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
    expected = tiny_encoder.encode_images((views.float() / 255 - mean) / std)
    assert np.abs(rows.views[4] - expected).max() < F16_TOL
    assert np.abs(rows.views[4, 0] - rows.views[4, 1]).max() > 1e-2  # views differ

    again = extract(scan_source(folder), tmp_path / "store", tiny_encoder, _opts())
    assert (again.encoded, again.already_stored, len(again.bad)) == (0, 6, 2)
    assert len(Store.open(tmp_path / "store")) == 6


def test_views_reproducible_independent_of_workers_and_batching(tiny_encoder, folder, tmp_path):
    src = scan_source(folder)
    extract(src, tmp_path / "a", tiny_encoder, _opts(seed=7))
    extract(src, tmp_path / "b", tiny_encoder, _opts(seed=7, workers=2, batch_size=9, chunk=100))
    extract(src, tmp_path / "c", tiny_encoder, _opts(seed=8))
    a, b, c = (_by_id(Store.open(tmp_path / n).select(with_views=True)) for n in "abc")
    assert list(a.ids) == list(b.ids)
    assert np.abs(a.views - b.views).max() < F16_TOL
    assert np.abs(a.views - c.views).max() > 0.05


def test_eval_split_uses_clip_transform_and_needs_distinct_ids(tiny_encoder, folder, tmp_path):
    src = scan_source(folder)
    store_dir = tmp_path / "store"
    extract(src, store_dir, tiny_encoder, _opts())
    with pytest.raises(BadInput, match="`id_prefix=`"):
        extract(src, store_dir, tiny_encoder, _opts(split="test"))
    extract(src, store_dir, tiny_encoder, _opts(split="test"), id_prefix="test/")
    test = _by_id(Store.open(store_dir).select(split="test", with_views=True))
    assert len(test) == 6 and test.ids[0] == "test/cat/img0.png"
    assert test.views is None or test.views.shape[1] == 0
    expected = _plain_features(tiny_encoder, [folder / i[len("test/"):] for i in test.ids])
    assert np.abs(test.features - expected).max() < F16_TOL


def test_unlabelled_query_folder(tiny_encoder, folder, tmp_path):
    report = extract(scan_source(folder, unlabelled=True), tmp_path / "store", tiny_encoder,
                     _opts(split="query"))
    rows = Store.open(tmp_path / "store").select()
    assert report.encoded == 6 and set(rows.labels) == {-1} and set(rows.splits) == {"query"}


def test_sources_folder_csv_tsv_glob(folder, tmp_path):
    classes = scan_source(folder)
    assert classes.labelled and classes.classes == list(CLASSES)
    assert [i.id for i in classes.items][:2] == ["cat/broken.jpg", "cat/img0.png"]

    plain = scan_source(folder / "cat")
    assert not plain.labelled and {i.id for i in plain.items} >= {"img0.png", "img1.jpg"}

    table = tmp_path / "list.csv"
    table.write_text(f"path,label\nimgs/cat/img0.png,cat\nimgs/dog_breed/img1.jpg,dog\n"
                     f"{folder / 'cat' / 'img2.png'}\n")
    csv_src = scan_source(table)
    assert [(i.id, i.label) for i in csv_src.items] == [
        ("imgs/cat/img0.png", "cat"), ("imgs/dog_breed/img1.jpg", "dog"),
        ("imgs/cat/img2.png", None)]
    assert csv_src.items[0].path.is_file()

    tsv = tmp_path / "list.tsv"
    tsv.write_text("imgs/cat/img0.png\tcat\n")
    assert scan_source(tsv).items[0].label == "cat"

    globbed = scan_source(str(folder / "*" / "*.png"))
    assert {i.id for i in globbed.items} == {"cat/img0.png", "cat/img2.png",
                                             "dog_breed/img0.png", "dog_breed/img2.png"}
    assert not globbed.labelled


def test_bad_sources_are_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not a folder"):
        scan_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="holds no files"):
        scan_source(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,cat,extra\n")
    with pytest.raises(BadInput, match="path\\[,label\\]"):
        scan_source(bad)
