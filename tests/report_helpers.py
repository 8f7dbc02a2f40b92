"""Shared by the report tests: reading report pages back, and headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Elements(HTMLParser):
    """Every start tag of a page as (tag, attributes), plus the page's text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def having(self, attr: str, tag: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if attr in a and (tag is None or t == tag)]


def read_page(path: Path) -> Elements:
    return Elements(path.read_text(encoding="utf-8"))


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium (as root it needs --no-sandbox); stdout is the page or DOM."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--no-first-run", *args],
                          capture_output=True, text=True, timeout=timeout)
