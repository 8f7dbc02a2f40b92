"""Hypothesis strategies that damage a directory of files: byte flips, truncation, deletion and
edits of JSON values and types. A damage is `(file name, new bytes or None for deleted)`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

Damage = tuple[str, bytes | None]

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 40), 2 ** 40) | st.floats()
    | st.text(max_size=8) | st.sampled_from([-1, 0, -1.0, 0.5, 1e308, "high", "", []]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=4,
)


def files_of(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file directly in `root` (names in `skip` excepted) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())
            if p.is_file() and p.name not in skip}


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """The path of every value in a JSON document (containers too, the root is `()`)."""
    if isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    else:
        items = []
    return [prefix] + [p for key, value in items for p in _paths(value, (*prefix, key))]


def _edited(doc: Any, path: tuple, value: Any, delete: bool) -> Any:
    """A copy of `doc` with the value at `path` replaced by `value` (or deleted)."""
    if not path:
        return value
    doc = json.loads(json.dumps(doc))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def damages(draw, files: dict[str, bytes], json_files: tuple[str, ...] = ()) -> Damage:
    """One damage to one of `files`; the JSON ones may also have a value edited or deleted."""
    name = draw(st.sampled_from(sorted(files)))
    data = files[name]
    kinds = ["delete"] + (["flip", "truncate"] if data else []) \
        + (["edit", "edit", "edit"] if name in json_files else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "delete":
        return name, None
    if kind == "truncate":
        return name, data[:draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        flipped = bytearray(data)
        flipped[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return name, bytes(flipped)
    doc = json.loads(data)
    path = draw(st.sampled_from(_paths(doc)))
    delete = bool(path) and draw(st.booleans())
    new = _edited(doc, path, None if delete else draw(JSON_VALUES), delete)
    text = json.dumps(new, indent=2)
    assume(text != json.dumps(doc, indent=2))
    return name, text.encode()


def damaged_copy(source: Path, target: Path, damage: Damage) -> None:
    """Copy the directory `source` to `target`, then apply `damage` there."""
    shutil.copytree(source, target)
    name, data = damage
    if data is None:
        (target / name).unlink()
    else:
        (target / name).write_bytes(data)
