"""Find the file behind an open_clip pretrained tag: the local cache first, a download only online.

Offline (HF_HUB_OFFLINE set, or the host unreachable within a second and a half) an uncached tag
fails at once with one line naming the tag, the cache directory and the checkpoint way out.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import BadInput

PROBE_SECONDS = 1.5
HF_HOST = "huggingface.co"
URL_CACHE = Path("~/.cache/clip").expanduser()


@dataclass(frozen=True)
class ResolvedWeights:
    """A local weights file and the preprocessing its tag prescribes."""

    path: Path
    preprocess: dict[str, Any] = field(default_factory=dict)


def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for no network access (same truthy values as the hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_cache_dir() -> Path:
    from huggingface_hub import constants  # start-up time: only weight look-ups need the hub

    return Path(constants.HF_HUB_CACHE)


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """The repo id and the file names open_clip would fetch for an 'org/repo/[file]' entry."""
    # start-up time: open_clip takes seconds to import
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def cached_file(cfg: dict[str, Any]) -> Path | None:
    """The already-downloaded weights for a pretrained config, or None."""
    # start-up time: only weight look-ups need the hub
    from huggingface_hub import try_to_load_from_cache

    if cfg.get("file"):
        return Path(cfg["file"])
    if cfg.get("hf_hub"):
        repo, names = _hf_candidates(cfg["hf_hub"])
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=hf_cache_dir())
            if isinstance(found, str):
                return Path(found)
    if cfg.get("url"):
        local = URL_CACHE / os.path.basename(cfg["url"])
        if local.is_file():
            return local
    return None


def reachable(host: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to host:443 opens within `timeout` seconds (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _offline_error(model: str, tag: str, cfg: dict[str, Any], why: str) -> BadInput:
    cache = hf_cache_dir() if cfg.get("hf_hub") else URL_CACHE
    return BadInput(
        f"pretrained weights {model}/{tag} are not in the cache {cache} and cannot be "
        f"downloaded ({why})", "download them on a connected machine into that cache, or pass "
        f"`checkpoint=` FILE with `model=` {model}"
    )


def resolve_tag(model: str, tag: str) -> ResolvedWeights:
    """The local file for `model`/`tag`, downloading it only when online."""
    # start-up time: open_clip takes seconds to import
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg
    from open_clip.pretrained import list_pretrained_tags_by_model as tags_of
    from open_clip.transform import merge_preprocess_dict

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        known = ", ".join(tags_of(model)) or "none"
        raise BadInput(f"unknown pretrained tag {tag!r} for {model} (known: {known})",
                       "pick a known tag or pass `checkpoint=` FILE")
    preprocess = merge_preprocess_dict({}, cfg)
    local = cached_file(cfg)
    if local is not None:
        return ResolvedWeights(local, preprocess)
    if hf_offline():
        raise _offline_error(model, tag, cfg, "HF_HUB_OFFLINE is set")
    host = HF_HOST if cfg.get("hf_hub") else urlparse(cfg["url"]).hostname or HF_HOST
    if not reachable(host):
        raise _offline_error(model, tag, cfg, f"{host} is unreachable")
    try:
        return ResolvedWeights(Path(download_pretrained(cfg)), preprocess)
    except Exception as exc:  # any download failure becomes the same actionable message
        raise _offline_error(model, tag, cfg, f"download failed: {exc}") from exc
