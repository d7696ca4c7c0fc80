"""Artifact records: the output manifest, its verification, and the environment of a build."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from llmbuild.plan.canonical import canonical_hash
from llmbuild.plan.digest import StatCache

SCHEMA_VERSION = 1
RECORD = "record.json"


def manifest(out_dir: Path, cache: StatCache | None = None) -> list[dict[str, Any]]:
    """Path, size and blake3 of every file under ``out_dir`` (the record excluded)."""
    cache = cache or StatCache()
    entries = []
    for root, dirs, files in os.walk(out_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(out_dir).as_posix()
            if rel == RECORD:
                continue
            entries.append(
                {"path": rel, "size": path.stat().st_size, "blake3": cache.digest(str(path))}
            )
    return entries


def output_digest(entries: list[dict[str, Any]]) -> str:
    """One digest of all outputs: equal digests mean byte-identical outputs."""
    return canonical_hash([[e["path"], e["blake3"]] for e in entries])


def verify_manifest(out_dir: Path, entries: list[dict[str, Any]], cache: StatCache) -> str | None:
    """None if every file matches its manifest entry, else what is wrong with the first
    file that does not. Unchanged files are checked by stat identity, not re-read."""
    for e in entries:
        path = out_dir / e["path"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{e['path']} is missing"
        if size != e["size"]:
            return f"{e['path']} has {size} bytes, the record says {e['size']}"
        if cache.digest(str(path)) != e["blake3"]:
            return f"{e['path']} does not match its recorded blake3 digest"
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(path: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _device() -> str:
    torch = sys.modules.get("torch")  # never imported just to describe the machine
    if torch is not None and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def environment(spec_dir: Path | None = None) -> dict[str, Any]:
    """Versions and machine of the process that built something."""
    from llmbuild import __version__

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": _device(),
        "llmbuild": __version__,
        "torch": _version("torch"),
        "megatron-core": _version("megatron-core"),
        "ray": _version("ray"),
    }
    if spec_dir is not None:
        env["git"] = _git(spec_dir)
    return env
