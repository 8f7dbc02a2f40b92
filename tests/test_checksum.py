"""`file_digest`: a file hashed through memory-mapped windows equals the hash of its bytes."""

from __future__ import annotations

import hashlib
import mmap

import pytest
import xxhash

from tipretrieval.util import checksum

WINDOW = 4 * mmap.ALLOCATIONGRANULARITY


@pytest.mark.parametrize("size", [0, 1, WINDOW - 1, WINDOW, 3 * WINDOW + 7])
def test_a_file_hashed_in_windows_equals_its_bytes_hashed_at_once(tmp_path, monkeypatch, size):
    monkeypatch.setattr(checksum, "WINDOW", WINDOW)
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    path = tmp_path / "f"
    path.write_bytes(data)
    assert checksum.file_digest(path) == f"xxh3_128:{xxhash.xxh3_128(data).hexdigest()}"
    with open(path, "rb") as f:
        assert checksum.file_digest(f, "sha256") == f"sha256:{hashlib.sha256(data).hexdigest()}"
