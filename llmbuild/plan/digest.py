"""Content digests of external files: blake3 over their bytes, with a stat cache.

A file's digest is cached under its stat identity (device, inode, size, modification and
change times) so an unchanged file is never read twice, while any write to it (even one
that keeps its size and restores its modification time) changes its change time, which
no user can set back; a set of files (a glob, a directory, a list) digests as the ordered
list of its file digests, so the paths that name the files never count.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from llmbuild.errors import UserError
from llmbuild.locations import CACHE_ENV

_CHUNK = 1 << 20


class MissingInput(UserError):
    """An external input path that matches no file."""


def blake3_file(path: str | os.PathLike[str]) -> str:
    from blake3 import blake3

    h = blake3()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def blake3_bytes(data: bytes) -> str:
    from blake3 import blake3

    return blake3(data).hexdigest()


class StatCache:
    """File digests keyed on stat identity, persisted as JSON (or kept in memory)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, str] = {}
        self.reads = 0
        self._dirty = False
        if self.path is not None:
            self.entries = _load_entries(self.path)

    def digest(self, path: str) -> str:
        st = os.stat(path)
        ident = f"{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
        found = self.entries.get(ident)
        if found is None:
            found = blake3_file(path)
            self.reads += 1
            self.entries[ident] = found
            self._dirty = True
        return found

    def save(self) -> None:
        """Persist new digests. The cache only saves hashing, so a directory that cannot
        be written (a read-only home, a full disk) costs one note, never the command."""
        if self.path is None or not self._dirty or self.path.parent in _UNWRITABLE:
            return
        try:
            _write_entries(self.path, self.entries)
        except OSError as e:
            _UNWRITABLE.add(self.path.parent)  # said once a process: a retry fails again
            print(
                f"note: file digests are not cached: {self.path.parent} cannot be written "
                f"({e.strerror or e}); set {CACHE_ENV} to a writable directory to keep them",
                file=sys.stderr,
            )
        self._dirty = False


_UNWRITABLE: set[Path] = set()
"""Stat cache directories a save failed in, in this process."""


def _load_entries(path: Path) -> dict[str, str]:
    """A saved stat cache's entries; none where it is missing, unreadable or garbled."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_entries(path: Path, entries: dict[str, str]) -> None:
    """Replace the file at ``path`` with ``entries`` in one rename, so a reader never
    sees half a file; the temp file is removed if the write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".statcache-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.endswith(".pyc")


def expand(pattern: str, only: tuple[str, ...] = ()) -> list[str]:
    """The files a path, directory or glob names, sorted; hidden files are skipped, and so
    are Python's bytecode caches (importing a task's ``utils.py`` writes one). With
    ``only``, a directory names just the files directly in it that match one of its
    globs."""
    if glob.has_magic(pattern):
        matches = sorted(glob.glob(pattern, recursive=True))
    else:
        matches = [pattern] if os.path.exists(pattern) else []
    files: list[str] = []
    for m in matches:
        if os.path.isdir(m) and only:
            files += [
                os.path.join(m, n)
                for n in sorted(os.listdir(m))
                if not _skipped(n)
                and any(fnmatch.fnmatchcase(n, g) for g in only)
                and os.path.isfile(os.path.join(m, n))
            ]
        elif os.path.isdir(m):
            for root, dirs, names in os.walk(m):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
                files += [os.path.join(root, n) for n in sorted(names) if not _skipped(n)]
        elif os.path.isfile(m):
            files.append(m)
    return files


def expand_url(pattern: str) -> list[str]:
    """The files an fsspec URL, directory URL or URL glob names, sorted, as URLs."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern)
    protocol = pattern.split("://", 1)[0]
    if glob.has_magic(path):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    else:
        found = [path] if fs.exists(path) else []
    names = sorted(f for f in found if not f.rsplit("/", 1)[-1].startswith(".") and fs.isfile(f))
    return [f"{protocol}://{f.lstrip('/')}" if protocol != "file" else f"file://{f}" for f in names]


def digest_url(url: str, cache: StatCache) -> str:
    """blake3 of a remote file, cached under its size and modification time or ETag."""
    import fsspec
    from blake3 import blake3

    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("created")
    ident = f"{url}|{info.get('size')}|{version}"
    found = cache.entries.get(ident)
    if found is None or version is None:
        h = blake3()
        with fs.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        found = h.hexdigest()
        cache.reads += 1
        if version is not None:
            cache.entries[ident] = found
            cache._dirty = True
    return found


COMPRESSION_SUFFIXES = (".gz", ".zst", ".bz2", ".xz", ".lz4")


def format_suffix(path: str) -> str:
    """The suffix a reader tells a file's format by, with its compression: ``.jsonl.gz``
    for ``a.b.jsonl.gz``, ``.txt`` for ``notes.txt``, ``""`` for ``README``."""
    name = path.rsplit("/", 1)[-1].lower()
    out = ""
    for comp in COMPRESSION_SUFFIXES:
        if name.endswith(comp) and len(name) > len(comp):
            name, out = name[: -len(comp)], comp
            break
    dot = name.rfind(".")
    return (name[dot:] if dot > 0 else "") + out


def file_digest(path: str) -> str:
    """blake3 of a local file or an fsspec URL, read in full."""
    return digest_url(path, StatCache()) if "://" in path else blake3_file(path)


def digest_paths(
    patterns: Iterable[str],
    cache: StatCache,
    *,
    unordered: bool = False,
    suffixes: bool = False,
    only: tuple[str, ...] = (),
) -> dict[str, object]:
    """The content digest of every file the patterns name, and their count.

    The files count in the order the patterns name them, or with ``unordered`` as a sorted
    list (for a node that reads them in content order); with ``suffixes`` each counts with
    its format suffix, and ``contents`` digests the bytes alone, so a plan can tell a
    changed suffix from changed bytes; ``only`` is ``expand``'s."""
    digests: list[str] = []
    suffix: list[str] = []
    seen: set[str] = set()  # a file two patterns match is read once
    for pattern in patterns:
        remote = "://" in pattern
        found = expand_url(pattern) if remote else expand(pattern, only)
        if not found:
            raise MissingInput(f"{pattern}: matches no file")
        found = [f for f in found if not (f in seen or seen.add(f))]
        digests += [digest_url(f, cache) if remote else cache.digest(f) for f in found]
        suffix += [format_suffix(f) for f in found]
    entries = [d + s for d, s in zip(digests, suffix)] if suffixes else list(digests)
    if unordered:
        entries.sort()
    out: dict[str, object] = {
        "files": len(digests),
        "blake3": blake3_bytes("\n".join(entries).encode()),
    }
    if suffixes:
        out["contents"] = blake3_bytes(
            "\n".join(sorted(digests) if unordered else digests).encode()
        )
    return out
