"""Where llmbuild keeps machine-local state: $LLMBUILD_CACHE_DIR, else ~/.cache/llmbuild.

Nothing here creates a directory: asking where the cache is must work with a read-only or
missing home (a batch job's), so whoever writes there creates what it writes into."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LLMBUILD_CACHE_DIR"


def stat_cache_path() -> Path:
    """Where this machine keeps file digests by stat identity."""
    return cache_dir() / "statcache.json"


def cache_dir(kind: str = "") -> Path:
    """The cache directory (or its ``kind`` subdirectory); it may not exist yet."""
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmbuild"
    )
    return Path(base) / kind if kind else Path(base)


def cache_dir_problem(e: OSError) -> str | None:
    """An OS error on a path in the cache dir, said as the cache's, with the fix; None for
    any other path. The generic advice (use another ``--store``) would mislead here: the
    cache dir is this machine's, and only ``LLMBUILD_CACHE_DIR`` moves it."""
    if not e.filename or not isinstance(e.filename, (str, bytes, os.PathLike)):
        return None
    base = os.path.abspath(cache_dir())
    path = os.path.abspath(os.fsdecode(e.filename))
    if os.path.commonpath([base, path]) != base:
        return None
    return (
        f"{e.strerror or e} ({path}): llmbuild's cache dir {base} cannot be written; "
        f"set {CACHE_ENV} to a writable directory"
    )
