"""Thumbnails of source images (Pillow), made once and reused by later builds of a report.

A thumbnail's file name is a hash of the image's absolute path, file size, modification time
and thumbnail size, so a rebuilt report reuses it and a changed image gets a new one.
Unreadable images get none.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

THUMB_DIR = "thumbs"


def thumb_name(source: Path, size: int) -> str | None:
    """The name of the `size`-pixel thumbnail of `source`; None when the file is missing."""
    try:
        st = source.stat()
    except OSError:
        return None
    key = f"{source.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{size}"
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ".jpg"


def _make(source: Path, target: Path, size: int) -> bool:
    """Write the thumbnail of `source` to `target` unless it exists; False when unreadable."""
    if target.exists():
        return True
    try:
        with Image.open(source) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
            img = img.convert("RGB")
            img.thumbnail((size, size))
            # rename: a killed build leaves no half thumbnail (no fsync: thumbnails are cheap
            # to remake and thousands of fsyncs are slow)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            img.save(tmp, "JPEG", quality=80)
            os.replace(tmp, target)
        return True
    except Exception as exc:  # any undecodable image simply has no thumbnail
        log.warning("no thumbnail for %s: %s", source, exc)
        return False


def make_thumbnails(sources: dict[str, str], html_dir: Path, size: int = 128
                    ) -> dict[str, str]:
    """Thumbnails of `sources` (key -> image path) under `html_dir/thumbs`; returns
    key -> thumbnail path relative to `html_dir` for the images that have one."""
    folder = html_dir / THUMB_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = {key: thumb_name(Path(path), size) if path else None
             for key, path in sources.items()}
    unique = {name: Path(sources[key]) for key, name in names.items() if name is not None}
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="thumbs") as pool:
        made = dict(zip(unique, pool.map(lambda name: _make(unique[name], folder / name, size),
                                         unique), strict=True))
    return {key: f"{THUMB_DIR}/{name}" for key, name in names.items()
            if name is not None and made[name]}
