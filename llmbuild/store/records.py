"""Artifact records: the one typed record of a committed node (written by the node runner
and the early cut-off, read by the store), its output manifest and their verification,
and the environment of a build."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from llmbuild.plan.canonical import canonical_hash
from llmbuild.plan.digest import StatCache, blake3_bytes

SCHEMA_VERSION = 2
RECORD = "record.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ManifestEntry(_Frozen):
    """One output file."""

    path: str
    size: int
    blake3: str


class NodeRef(_Frozen):
    """A committed node: the name it was built as, its key and, where it is an input,
    the digest of its outputs as they were read."""

    node: str
    key: str
    output_digest: str = ""
    """Empty in records written before it was kept."""


class CorruptRecord(Exception):
    """A record that cannot be read, does not validate, or does not match its digest."""


class Record(_Frozen):
    """What a committed node is: its key and preimage, the artifacts it read, its outputs
    (a manifest), metrics, timings and environment. ``digest`` seals the rest: a record
    edited or cut short by anyone but its writer no longer verifies."""

    schema_version: int = SCHEMA_VERSION
    name: str
    """The node name it was built as (a renamed node finds it by key all the same)."""
    key: str
    preimage: dict[str, Any]
    inputs: dict[str, NodeRef] = {}
    """Slot -> the upstream artifact it read."""
    outputs: list[ManifestEntry] = []
    output_digest: str
    cutoff_key: str | None = None
    alias_of: NodeRef | None = None
    """Early cut-off: the artifact whose outputs this node reuses (no files of its own)."""
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    """What the user should know about the result, said when it was built."""
    timings: dict[str, float] = {}
    environment: dict[str, Any] = {}
    build: str = ""
    digest: str = ""

    def sealed(self) -> Record:
        return self.model_copy(update={"digest": _digest(self.model_dump(mode="json"))})

    def to_json(self) -> bytes:
        return json.dumps(self.sealed().model_dump(mode="json"), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        """Parse and verify a record; ``CorruptRecord`` says what is wrong."""
        try:
            raw = json.loads(data)
        except ValueError as e:
            raise CorruptRecord(f"record.json is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise CorruptRecord("record.json is not a JSON object")
        if "schema_version" not in raw:
            raise CorruptRecord("record.json has no schema_version: it is no llmbuild record")
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise CorruptRecord(
                f"record.json has schema version {raw.get('schema_version')!r}, "
                f"this llmbuild reads {SCHEMA_VERSION}"
            )
        try:
            rec = cls.model_validate(raw)
        except ValidationError as e:
            raise CorruptRecord(f"record.json does not validate: {e.errors()[0]['msg']}") from None
        if raw.get("digest") != _digest(raw):  # of what was written, so fields added later
            raise CorruptRecord("record.json does not match its digest (it was edited)")
        return rec

    @property
    def short(self) -> str:
        return self.key[:12]


def _digest(body: dict[str, Any]) -> str:
    """blake3 of a record's JSON without its digest."""
    rest = {k: v for k, v in body.items() if k != "digest"}
    return blake3_bytes(json.dumps(rest, sort_keys=True).encode())


def manifest(out_dir: Path, cache: StatCache | None = None) -> list[ManifestEntry]:
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
                ManifestEntry(path=rel, size=path.stat().st_size, blake3=cache.digest(str(path)))
            )
    return entries


def output_digest(entries: list[ManifestEntry]) -> str:
    """One digest of all outputs: equal digests mean byte-identical outputs."""
    return canonical_hash([[e.path, e.blake3] for e in entries])


def verify_manifest(out_dir: Path, entries: list[ManifestEntry], cache: StatCache) -> str | None:
    """None if every file matches its manifest entry, else what is wrong with the first
    file that does not. Files unchanged since they were last hashed are vouched for by
    their stat identity (which any write changes), others are read again."""
    for e in entries:
        path = out_dir / e.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{e.path} is missing"
        if size != e.size:
            return f"{e.path} has {size} bytes, the record says {e.size}"
        if cache.digest(str(path)) != e.blake3:
            return f"{e.path} does not match its recorded blake3 digest"
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
