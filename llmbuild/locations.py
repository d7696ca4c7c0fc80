"""Where llmbuild keeps machine-local state: $LLMBUILD_CACHE_DIR, else ~/.cache/llmbuild."""

from __future__ import annotations

import os
from pathlib import Path


def stat_cache_path() -> Path:
    """Where this machine keeps file digests by stat identity."""
    return cache_dir() / "statcache.json"


def cache_dir(kind: str = "") -> Path:
    base = os.environ.get("LLMBUILD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmbuild"
    )
    path = Path(base) / kind if kind else Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
