"""Versioned JSON documents (`util.jsonfile`): the one version policy and checksum of the
store manifest, cache.json and the classify journal."""

from __future__ import annotations

import hashlib
import json

import pytest

from tipretrieval.errors import BadInput, CorruptData, NewerFormat
from tipretrieval.store.manifest import FORMAT as MANIFEST
from tipretrieval.util.jsonfile import DocumentFormat, content_sha256

SEALED = DocumentFormat("test doc", 3, version_key="v", sealed_from=2)
FIX = "rewrite it"


def canonical_sha256(obj: dict) -> str:
    """The manifest's checksum as format 2 stores wrote it before `DocumentFormat` sealed it."""
    text = json.dumps({k: v for k, v in obj.items() if k != "checksum"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_sealed_documents_carry_the_sha256_of_the_rest(tmp_path):
    SEALED.write(tmp_path / "d.json", {"name": "café", "n": [1, 2]})
    raw = json.loads((tmp_path / "d.json").read_text(encoding="utf-8"))
    assert raw == {"v": 3, "name": "café", "n": [1, 2], "checksum": canonical_sha256(raw)}
    assert content_sha256(raw) == canonical_sha256(raw)
    doc = SEALED.read(tmp_path / "d.json", FIX)
    assert (doc.version, doc.body) == (3, {"name": "café", "n": [1, 2]})


def test_an_edit_fails_the_checksum_from_the_sealed_version_on(tmp_path):
    path = tmp_path / "d.json"
    for version, sealed in ((1, False), (2, True), (3, True)):
        SEALED.write(path, {"n": 1}, version)
        raw = json.loads(path.read_text())
        assert ("checksum" in raw) == sealed
        path.write_text(json.dumps({**raw, "n": 2}))
        if sealed:
            with pytest.raises(CorruptData, match=r"d.json fails its checksum .*: rewrite it$"):
                SEALED.read(path, FIX)
        else:
            assert SEALED.read(path, FIX).body == {"n": 2}  # older versions had no checksum


def test_newer_unreadable_and_foreign_documents_are_one_line(tmp_path):
    path = tmp_path / "d.json"
    SEALED.write(path, {"n": 1}, 4)
    with pytest.raises(NewerFormat, match=r"newer tipretrieval \(test doc v4; this one reads up "
                                          r"to v3\): upgrade tipretrieval"):
        SEALED.read(path, FIX)
    path.write_text("{")
    with pytest.raises(CorruptData, match="test doc .* is unreadable .*: rewrite it"):
        SEALED.read(path, FIX)
    tagged = DocumentFormat("tagged doc", 1, tag="mine")
    tagged.write(path, {"n": 1})
    assert json.loads(path.read_text()) == {"format": "mine", "version": 1, "n": 1}
    with pytest.raises(BadInput, match="is not a other doc .format 'mine'"):
        DocumentFormat("other doc", 1, tag="yours").read(path, FIX)


def test_a_format_writes_with_its_own_encoder(tmp_path):
    lines = DocumentFormat("lines", 1, dump=lambda doc: "\n".join(map(str, doc)) + "\n")
    lines.write(tmp_path / "d.json", {"a": 1, "b": 2})
    assert (tmp_path / "d.json").read_text() == "version\na\nb\n"


def test_the_manifest_is_written_one_shard_a_line(tmp_path):
    shards = [{"name": f"s{i}", "counts": {"train": {"0": i}}} for i in range(3)]
    MANIFEST.write(tmp_path / "m.json", {"store_id": "x", "classes": ["é"], "shards": shards})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert text.splitlines()[1:] == [f"  {json.dumps(s)}," for s in shards[:2]] + [
        f"  {json.dumps(shards[2])}", "]}"]
    raw = json.loads(text)
    assert raw["format_version"] == MANIFEST.version and raw["checksum"] == canonical_sha256(raw)
    assert '"classes": ["é"]' in text.splitlines()[0]
    assert MANIFEST.read(tmp_path / "m.json", FIX).body == {
        "store_id": "x", "classes": ["é"], "shards": shards}


def test_an_unsealed_format_leaves_a_checksum_key_to_its_reader(tmp_path):
    plain = DocumentFormat("journal-like", 2, version_key="format_version")
    plain.write(tmp_path / "j.json", {"n": 1, "checksum": "its own"})
    assert plain.read(tmp_path / "j.json", FIX).body == {"n": 1, "checksum": "its own"}


def test_a_format_may_bring_its_own_checksum(tmp_path):
    own = DocumentFormat("own", 1, sealed_from=1, digest=lambda rest: ",".join(sorted(rest)))
    own.write(tmp_path / "d.json", {"b": 1, "a": 2})
    assert json.loads((tmp_path / "d.json").read_text())["checksum"] == "a,b,version"
    assert own.read(tmp_path / "d.json", FIX).body == {"b": 1, "a": 2}
