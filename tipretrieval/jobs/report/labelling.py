"""The labelling loop's files: the rows to label next as an ids file (`add-shots --ids-file`)
and, when their images are known, a `path,label` CSV (`add-shots --images`, after correcting
the labels) that starts with the predicted class."""

from __future__ import annotations

import csv
from pathlib import Path

from ...util.atomic import atomic_path
from .model import Card

IDS_FILE = "to-label.txt"
CSV_FILE = "to-label.csv"


def write_label_files(html_dir: Path, cards: list[Card], sources: dict[str, str]
                      ) -> dict[str, str]:
    """Write the ids file (always) and the CSV (when every row has an image); what -> name."""
    with atomic_path(html_dir / IDS_FILE) as tmp:
        tmp.write_text("".join(f"{c.id}\n" for c in cards))
    files = {"ids, one per line": IDS_FILE}
    paths = [sources.get(f"q{c.row_id}") for c in cards]
    if cards and all(paths):
        with atomic_path(html_dir / CSV_FILE) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows([str(Path(p).resolve()), c.top[0][1]]
                             for p, c in zip(paths, cards, strict=True))
        files["image path and predicted class, to correct"] = CSV_FILE
    else:
        (html_dir / CSV_FILE).unlink(missing_ok=True)
    return files
