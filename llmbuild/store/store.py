"""The content-addressed artifact store.

artifacts/<name>-<key12>/   outputs + record.json (present = committed)
leases/<key>                who is building a key right now
work/<name>-<key12>/        resumable work (checkpoints) until the node commits
nodes/<name>.json           the last committed key and preimage of each node name
cutoff/<cutoff key>         early cut-off: which artifact an output-identical build made
builds/<spec hash>.json     build records: resolved spec, node keys, environment
corrupt/                    artifacts whose files no longer match their manifest
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from llmbuild.locations import cache_dir
from llmbuild.plan.digest import StatCache
from llmbuild.store.fs import FsspecFS, LocalFS, open_fs
from llmbuild.store.lease import Lease, describe, live_holder, try_acquire
from llmbuild.store.records import RECORD, verify_manifest


def safe_name(name: str) -> str:
    """A node name as a file name: ``eval:ppl@pretrain`` -> ``eval_ppl_pretrain``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def artifact_dirname(name: str, key: str) -> str:
    """``stage:pretrain`` + key -> ``stage_pretrain-3f2a9c1e4b7d``."""
    return f"{safe_name(name)}-{key[:12]}"


class Store:
    """Artifacts under their keys, on a local directory or any fsspec URL."""

    def __init__(
        self, location: str, cache: StatCache | None = None, work_root: Path | None = None
    ) -> None:
        self.fs: LocalFS | FsspecFS = open_fs(location)
        self.cache = cache or StatCache()
        if work_root is None:
            work_root = self.fs.root if isinstance(self.fs, LocalFS) else cache_dir("work")
        self.work_root = Path(work_root)

    @property
    def url(self) -> str:
        return self.fs.url

    # -- records ---------------------------------------------------------------------
    def _read_json(self, rel: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.fs.read_bytes(rel))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def record(self, name: str, key: str) -> dict[str, Any] | None:
        """The committed record of a node key, following early cut-off aliases."""
        rec = self._read_json(f"artifacts/{artifact_dirname(name, key)}/{RECORD}")
        if rec is not None and rec.get("key") != key:
            return None  # a 12-character prefix collision: not ours
        return rec

    def resolve(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The record holding the outputs (an alias points at the artifact it reuses)."""
        if rec.get("alias_of"):
            target = self.record(rec["alias_of"]["name"], rec["alias_of"]["key"])
            if target is not None:
                return target
        return rec

    def has(self, name: str, key: str) -> bool:
        rec = self.record(name, key)
        return rec is not None and (not rec.get("alias_of") or self.resolve(rec) is not rec)

    def last_preimage(self, name: str) -> dict[str, Any] | None:
        ref = self._read_json(f"nodes/{safe_name(name)}.json")
        return ref.get("preimage") if ref else None

    def running_elsewhere(self, name: str, key: str) -> str | None:
        holder = live_holder(self.fs, f"leases/{key}")
        return f"running elsewhere: {describe(holder)}" if holder else None

    def resumable(self, name: str, key: str) -> str | None:
        step = checkpoint_step(self.work_dir(name, key, create=False))
        return None if step is None else f"resume from step {step}"

    # -- building --------------------------------------------------------------------
    def work_dir(self, name: str, key: str, create: bool = True) -> Path:
        path = self.work_root / "work" / artifact_dirname(name, key)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def scratch(self, name: str, key: str) -> Path:
        """A temp dir to build a node into; committing it is one rename (local stores)."""
        return self.fs.scratch_dir(f"{artifact_dirname(name, key)}-")

    def lease(self, key: str, owner: dict[str, Any]) -> Lease | None:
        return try_acquire(self.fs, f"leases/{key}", owner)

    def commit(self, out_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
        """Commit a built node: its record is written into ``out_dir`` last, then the dir
        becomes ``artifacts/<name>-<key12>``. The first committed result for a key is
        canonical: if one exists already, it is kept and returned."""
        name, key = record["name"], record["key"]
        existing = self.record(name, key)
        if existing is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
            return existing
        (out_dir / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
        target = f"artifacts/{artifact_dirname(name, key)}"
        if self.fs.exists(target):  # a half-uploaded remote attempt without a record
            self.fs.remove(target)
        self.fs.put_dir(out_dir, target)
        self._after_commit(record)
        return record

    def alias(self, record: dict[str, Any]) -> dict[str, Any]:
        """Commit a node that reuses another artifact (early cut-off): a record only."""
        tmp = self.scratch(record["name"], record["key"])
        return self.commit(tmp, record)

    def _after_commit(self, record: dict[str, Any]) -> None:
        ref = {"key": record["key"], "preimage": record["preimage"], "committed": time.time()}
        self.fs.write_bytes(f"nodes/{safe_name(record['name'])}.json", json.dumps(ref).encode())
        if record.get("cutoff_key") and not record.get("alias_of"):
            pointer = {"name": record["name"], "key": record["key"]}
            self.fs.write_bytes(f"cutoff/{record['cutoff_key']}", json.dumps(pointer).encode())
        work = self.work_dir(record["name"], record["key"], create=False)
        log = work / "node.log"  # every attempt's log, kept beside the artifact
        if log.exists():
            self.fs.write_bytes(self.log_path(record), log.read_bytes())
        shutil.rmtree(work, ignore_errors=True)

    def cutoff_target(self, cutoff_key: str) -> dict[str, Any] | None:
        """The committed record an earlier build made with this cut-off key."""
        ptr = self._read_json(f"cutoff/{cutoff_key}")
        return self.record(ptr["name"], ptr["key"]) if ptr else None

    # -- reading ---------------------------------------------------------------------
    def local_dir(self, rec: dict[str, Any]) -> Path:
        """A local directory holding the artifact's outputs (remote stores are fetched)."""
        rec = self.resolve(rec)
        rel = f"artifacts/{artifact_dirname(rec['name'], rec['key'])}"
        if isinstance(self.fs, LocalFS):
            return self.fs.path(rel)
        local = cache_dir("artifacts") / artifact_dirname(rec["name"], rec["key"])
        if verify_manifest(local, rec["outputs"], self.cache) is not None:
            shutil.rmtree(local, ignore_errors=True)
            staging = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
            self.fs.get_dir(rel, staging)
            staging.rename(local)
        return local

    def verify(self, rec: dict[str, Any]) -> str | None:
        """None if the artifact's files match its manifest, else the problem."""
        target = self.resolve(rec)
        if target.get("alias_of"):
            return f"it reuses {target['alias_of']['name']}, which is gone"
        try:
            return verify_manifest(self.local_dir(target), target["outputs"], self.cache)
        except (OSError, KeyError) as e:
            return f"cannot be read: {e}"

    def quarantine(self, rec: dict[str, Any]) -> str:
        """Move a corrupt artifact aside (never deleted silently, never used again)."""
        rel = f"artifacts/{artifact_dirname(rec['name'], rec['key'])}"
        dest = f"corrupt/{artifact_dirname(rec['name'], rec['key'])}-{int(time.time())}"
        self.fs.rename(rel, dest)
        return dest

    def artifacts(self) -> list[dict[str, Any]]:
        out = []
        for d in self.fs.listdir("artifacts"):
            rec = self._read_json(f"artifacts/{d}/{RECORD}")
            if rec is not None:
                out.append(rec)
        return out

    def remove_artifact(self, rec: dict[str, Any]) -> None:
        self.fs.remove(f"artifacts/{artifact_dirname(rec['name'], rec['key'])}")
        self.fs.remove(self.log_path(rec))

    @staticmethod
    def log_path(rec: dict[str, Any]) -> str:
        """Where a committed node's build log is kept, relative to the store."""
        return f"logs/{artifact_dirname(rec['name'], rec['key'])}.log"

    # -- builds ----------------------------------------------------------------------
    def save_build(self, build: dict[str, Any]) -> None:
        self.fs.write_bytes(
            f"builds/{build['spec_hash']}.json",
            json.dumps(build, indent=1, sort_keys=True).encode(),
        )

    def builds(self) -> list[dict[str, Any]]:
        out = [
            b
            for f in self.fs.listdir("builds")
            if f.endswith(".json")
            if (b := self._read_json(f"builds/{f}")) is not None
        ]
        return sorted(out, key=lambda b: b.get("finished") or b.get("started") or 0)

    def find_build(self, prefix: str) -> dict[str, Any] | None:
        matches = [f for f in self.fs.listdir("builds") if f.startswith(prefix)]
        if len(matches) != 1:
            return None
        return self._read_json(f"builds/{matches[0]}")


CHECKPOINT_MARKER = "checkpoint.json"
"""In a node's work dir: the step its resumable checkpoint reached (written last)."""


def mark_checkpoint(work_dir: Path, step: int, **info: Any) -> None:
    """Record, atomically, that a resumable checkpoint at ``step`` is in ``work_dir``."""
    marker = work_dir / CHECKPOINT_MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, **info}))
    tmp.replace(marker)


def checkpoint_step(work_dir: Path) -> int | None:
    """The step of the resumable checkpoint a node marked in its work dir, if any."""
    try:
        return json.loads((work_dir / CHECKPOINT_MARKER).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
