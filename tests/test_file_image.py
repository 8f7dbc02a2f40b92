"""FileImage: an in-memory file (h5py's file-object driver writes shards into it) that is
hashed in memory and saved around the page cache."""

from __future__ import annotations

import errno
import io

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tipretrieval.util import file_image
from tipretrieval.util.checksum import file_digest
from tipretrieval.util.file_image import ALIGN, FileImage

OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3 * ALIGN), st.binary(min_size=1, max_size=5000)),
    st.tuples(st.just("read"), st.integers(0, 3 * ALIGN), st.integers(0, 5000)),
    st.tuples(st.just("cut"), st.integers(0, 100), st.just(b"")),
), max_size=25)


def apply(f, ops) -> list:
    """Run `ops` on the file `f`; what each returned (reads: the bytes read)."""
    out = []
    for op, at, data in ops:
        f.seek(at)
        if op == "write":
            out.append(f.write(data))
        elif op == "read":
            buf = bytearray(data)
            n = f.readinto(buf)
            out.append(bytes(buf[:n]))
        else:  # cut to `at` percent of the size (BytesIO never grows by truncate)
            out.append(f.truncate(f.seek(0, io.SEEK_END) * at // 100))
        out.append(f.tell())
    return out


@settings(max_examples=60, deadline=None)
@given(first=OPS, second=OPS)
def test_reads_and_writes_match_bytesio_and_a_reset_image_keeps_no_old_bytes(first, second):
    image = FileImage(capacity=1)  # grows while written
    try:
        for ops in (first, second):
            ref = io.BytesIO()
            image.reset()
            assert apply(image, ops) == apply(ref, ops)
            assert image.size == len(ref.getvalue())
            image.seek(0)
            assert image.read() == ref.getvalue()
    finally:
        image.close()


def test_truncating_past_the_end_adds_zeros_even_in_reused_memory():
    image = FileImage()
    image.write(b"\xff" * 100)
    image.reset()
    image.write(b"ab")
    assert image.truncate(10) == 10 and image.size == 10
    image.seek(0)
    assert image.read() == b"ab" + bytes(8)
    image.close()


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", [1, ALIGN - 1, ALIGN, 3 * ALIGN + 17])
def test_save_writes_exactly_the_image_and_its_digest_is_the_files(tmp_path, monkeypatch,
                                                                   direct, size):
    if not direct:
        monkeypatch.setattr(file_image, "_O_DIRECT", 0)
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    image = FileImage()
    image.write(data)
    path = tmp_path / "f"
    path.write_bytes(b"older, longer contents" * 1000)
    image.save(path)
    assert path.read_bytes() == data
    assert image.digest() == file_digest(path)
    assert image.size == size  # the padding is not part of the image
    image.close()


def test_h5py_builds_a_file_in_an_image_that_reads_back_from_disk(tmp_path):
    x = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float16)
    image = FileImage()
    for name in ("a.h5", "b.h5"):  # the second file reuses the image's memory
        image.reset()
        with h5py.File(image, "w") as f:
            f.create_dataset("x", data=x, chunks=(1024, 64), fletcher32=True)
        image.save(tmp_path / name)
        with h5py.File(tmp_path / name, "r") as f:
            assert np.array_equal(f["x"][()], x) and f["x"].fletcher32
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    image.close()


def test_a_full_disk_is_an_oserror_and_the_image_still_closes(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(file_image.os, "pwrite", full)
    monkeypatch.setattr(file_image, "open", full, raising=False)
    image = FileImage()
    image.write(b"x" * 10_000)
    (tmp_path / "f").touch()
    with pytest.raises(OSError) as caught:
        image.save(tmp_path / "f")
    assert caught.value.errno == errno.ENOSPC
    image.close()  # no view of its memory is left (the traceback still holds the frames)
