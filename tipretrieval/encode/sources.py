"""Image sources: a class-folder tree, a CSV/TSV of `path[,label]`, or a plain folder / glob.

Every image gets a stable id: its path relative to the source root, with '/' separators (the
root is the folder itself, the CSV's folder, or the glob's fixed leading folder). Files are
listed without opening them; unreadable ones are found, and reported, at decode time.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ImageItem:
    """One image to encode: its id, where it lies, and its class name (None = unlabelled)."""

    id: str
    path: Path
    label: str | None = None


@dataclass
class Source:
    """The images of one source, in a stable (sorted) order, and the class names they use."""

    root: Path
    items: list[ImageItem]

    @property
    def labelled(self) -> bool:
        return any(item.label is not None for item in self.items)

    @property
    def classes(self) -> list[str]:
        return sorted({item.label for item in self.items if item.label is not None})


def _visible_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, recursively, skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return found


def _item_id(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _from_folder(root: Path, unlabelled: bool) -> Source:
    top_files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    class_layout = not unlabelled and not top_files
    items = []
    for path in _visible_files(root):
        rel = path.relative_to(root).as_posix()
        label = rel.split("/", 1)[0] if class_layout else None
        items.append(ImageItem(rel, path, label))
    return Source(root, items)


def _from_table(table: Path, unlabelled: bool) -> Source:
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    root = table.parent
    items = []
    with open(table, newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
            if not row or not row[0].strip():
                continue
            if lineno == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) > 2:
                raise BadInput(f"{table} line {lineno} has {len(row)} fields: write path[,label]")
            path = Path(row[0].strip())
            path = path if path.is_absolute() else root / path
            label = row[1].strip() if len(row) == 2 and row[1].strip() and not unlabelled else None
            items.append(ImageItem(_item_id(path, root), path, label))
    return Source(root, items)


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _from_glob(pattern: str) -> Source:
    root = _glob_root(pattern)
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    return Source(root, [ImageItem(_item_id(p, root), p) for p in paths])


def scan_source(spec: str | Path, *, unlabelled: bool = False) -> Source:
    """List the images of a folder, CSV/TSV file or glob; `unlabelled` ignores class labels."""
    spec = str(spec)
    path = Path(spec)
    if GLOB_CHARS & set(spec) and not path.exists():
        source = _from_glob(spec)
    elif path.is_dir():
        source = _from_folder(path, unlabelled)
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        source = _from_table(path, unlabelled)
    else:
        raise BadInput(
            f"image source {spec} is not a folder, .csv/.tsv file or glob: "
            "give a folder of images (or of class folders), a CSV of path[,label] or a glob"
        )
    if not source.items:
        raise BadInput(f"image source {spec} holds no files: point it at your images")
    ids = [item.id for item in source.items]
    if len(set(ids)) != len(ids):
        raise BadInput(f"image source {spec} lists the same image twice: remove duplicate rows")
    return source
