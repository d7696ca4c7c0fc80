"""The cores this machine's builds compute with, so that a build can say when it and
another build of this user ask for more than the machine has.

A lone training rank takes every core of the machine by default, and so do evals and
exports. Two such builds at once on one machine oversubscribe it: torch's threads spin
at each parallel region's barrier, waiting for threads that the other build's threads
keep off the cores, and each build runs many times slower, not twice. A build cannot
fix that by taking fewer threads on its own (its trained bits would then depend on what
else ran), so it says so, naming the other build and the fix.

Each build that runs multi-threaded work on this machine (an inline build, or a Ray
cluster it started here) holds a claim: a small file in a per-user directory of the
machine's temp dir, naming its process, node and cores; claims of processes that are
gone are ignored and removed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llmbuild.backend import Resources


def claims_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"llmbuild-cores-{uid}"


def cores_of(resources: Resources) -> int:
    """The cores a node computes with on this machine."""
    return max(1, round(resources.cpus * resources.ranks))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


@dataclass
class Claim:
    """One node's cores, held by this process until released."""

    path: Path | None

    def release(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            try:  # the last claim leaves no directory behind
                self.path.parent.rmdir()
            except OSError:
                pass
            self.path = None


def others(root: Path | None = None) -> list[dict]:
    """The live claims of other processes (those of dead ones are removed)."""
    root = root or claims_dir()
    found = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            claim = json.loads(path.read_text())
            pid = int(claim["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours to judge
        if pid == os.getpid():
            continue
        if not _alive(pid):
            path.unlink(missing_ok=True)
            continue
        found.append(claim)
    return found


def claim(node: str, resources: Resources, store: str, root: Path | None = None) -> Claim:
    """Hold ``node``'s cores while it runs (nothing for one core: a single thread shares
    a machine well). Never fails a build: without a writable temp dir there is no claim."""
    cores = cores_of(resources)
    if cores <= 1:
        return Claim(None)
    root = root or claims_dir()
    path = root / f"{os.getpid()}-{time.monotonic_ns()}.json"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"pid": os.getpid(), "node": node, "cores": cores, "store": store})
        )
        tmp.replace(path)
    except OSError:
        return Claim(None)
    return Claim(path)


def oversubscribed(resources: Resources, root: Path | None = None) -> str | None:
    """What to say when ``resources`` and the other builds' claims on this machine ask for
    more cores than it has; None when they fit."""
    cores = cores_of(resources)
    machine = os.cpu_count() or 1
    if cores <= 1:
        return None
    busy = others(root)
    held = sum(int(c.get("cores", 0)) for c in busy)
    if not busy or held + cores <= machine:
        return None
    shown = "; ".join(f"{c['node']}, pid {c['pid']}" for c in busy[:3])
    more = f"; {len(busy) - 3} more" if len(busy) > 3 else ""
    return (
        f"this machine has {machine} cores, and another build on it computes with {held} "
        f"of them ({shown}{more}) while this node asks for {cores}: both run many times "
        "slower while they overlap; build one after the other, or set "
        "parallelism.cpus_per_rank in each so that their training fits (a stage's "
        "trained bits depend on its thread count)"
    )
