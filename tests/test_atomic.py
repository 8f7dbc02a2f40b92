"""`atomic_path`: the target is replaced whole or not at all, durably (fsync before rename)."""

import json
import os
import stat
from pathlib import Path

import pytest

from tipretrieval.util import atomic
from tipretrieval.util.atomic import atomic_path, write_json


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and tmp.exists()
        tmp.write_bytes(b"new bytes")
        assert target.read_bytes() == b"old"  # nothing visible before the block ends
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_an_exception_keeps_the_old_bytes_and_removes_the_temporary(tmp_path):
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half written")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "new.json") as tmp:
        tmp.write_bytes(b"x")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no new file either


def test_file_data_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append(("fsync", path, path.read_bytes() if path.is_file() else None))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "f.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"payload")
    assert calls == [("fsync", tmp, b"payload"), ("replace", tmp, target),
                     ("fsync", tmp_path, None)]


def test_new_files_get_the_umask_permissions_not_0600(tmp_path):
    target = tmp_path / "f.txt"
    write_json(target, {"a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~atomic._UMASK


def test_write_json_keeps_the_callers_key_order(tmp_path):
    target = tmp_path / "doc.json"
    doc = {"version": 2, "name": "x", "body": {"zeta": 1, "alpha": [3, 1]}}
    write_json(target, doc)  # the version first, as written, for people reading the file
    text = target.read_text()
    assert list(json.loads(text)) == ["version", "name", "body"]
    assert text.index('"zeta"') < text.index('"alpha"')
    assert json.loads(text) == doc
