"""Garbage collection: keep what the most recent builds reference, remove the rest; and
what builds that were killed leave behind (lock files, temp dirs, work dirs)."""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild.errors import UserError
from llmbuild.store.lease import clear_stale, live_holder, owner_info
from llmbuild.store.store import Store, checkpoint_step

SCRATCH_KEY = re.compile(r"-([0-9a-f]{12})-[a-z0-9_]+$")
"""A node's temp dir name: ``<node>-<key12>-<random>`` (``Store.scratch``)."""
SCRATCH_GRACE = 5.0
"""Seconds a fresh temp dir is left alone, whatever its lease says."""


LOG = "node.log"
"""In a node's work dir: the log of every attempt at its key (``run.node``)."""
BUILDING = re.compile(r" building (\S+) \(key [0-9a-f]+\)")
"""The line each attempt begins its log with, naming the node."""


@dataclass(frozen=True)
class WorkLeft:
    """The work dir of a node that began and did not commit (its build was killed, or
    the node failed): a resumable checkpoint, partial files, the log."""

    key: str
    path: Path
    node: str | None
    """The node its log says was building (None without a log that says so)."""
    step: int | None
    """The step of its resumable checkpoint, if it marked one."""
    size: int
    """Bytes it holds besides its log."""
    log: Path | None

    @property
    def what(self) -> str:
        """What it holds, in words: ``a resumable checkpoint at step 800 and its log``."""
        held = [f"a resumable checkpoint at step {self.step}"] if self.step is not None else []
        if not held and self.size:
            held.append("partial files")
        return " and ".join(held + (["its log"] if self.log else []))

    @property
    def where(self) -> str:
        """``a resumable checkpoint at step 800 and its log are in <path>``."""
        return f"{self.what} {'are' if self.size and self.log else 'is'} in {self.path}"


def _node_of(log: Path) -> str | None:
    try:
        with log.open(errors="replace") as f:
            found = BUILDING.search(f.readline())
    except OSError:
        return None
    return found.group(1) if found else None


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            if not (n == LOG and root == str(path)):
                try:
                    total += os.lstat(os.path.join(root, n)).st_size
                except OSError:
                    pass
    return total


def work_left(store: Store) -> list[WorkLeft]:
    """The work dirs of nodes begun and not committed, the newest first; the running
    builds' are among them (a lease says which)."""
    out = []
    for key in store.work_keys():
        path = store.work_dir(key, create=False)
        log = path / LOG
        log_found = log if log.is_file() else None
        node = _node_of(log) if log_found else None
        out.append(WorkLeft(key, path, node, checkpoint_step(path), _size(path), log_found))

    def mtime(w: WorkLeft) -> float:
        try:
            return w.path.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(out, key=mtime, reverse=True)


def abandoned_work(store: Store) -> list[WorkLeft]:
    """The work dirs no live build uses (its key is not leased, nor in a running build's
    list) that hold more than a log: what killed builds left, for the next to resume.
    Nothing for a remote store: its work dirs are in this machine's cache, which every remote
    store shares, so they are not its own to judge."""
    from llmbuild.store.fs import LocalFS

    if not isinstance(store.fs, LocalFS) or store.work_root != store.fs.root:
        return []
    running = store.running_keys()
    return [
        w
        for w in work_left(store)
        if w.size and w.key not in running and store.lease_holder(w.key) is None
    ]


def _drop_work(work: WorkLeft) -> None:
    """Remove what a work dir holds but its log (which ``status`` and ``show`` point at)."""
    for path in work.path.iterdir():
        if path.name == LOG:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def clear_killed(
    store: Store,
    folders: tuple[str, ...] = ("leases", "running"),
    this_host: bool = False,
    dry_run: bool = False,
) -> int:
    """Remove the lease and ``running/`` files of builds that ended without removing them
    (killed); with ``this_host``, only those of this host's processes that have ended,
    never another host's. How many (would be) removed."""
    count = 0
    for folder in folders:
        for name in store.fs.listdir(folder):
            rel = f"{folder}/{name}"
            if name.endswith(".takeover") or live_holder(store.fs, rel) is not None:
                continue
            if dry_run or clear_stale(store.fs, rel, this_host):
                count += 1
    return count


@dataclass
class GcReport:
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    scratch_removed: int = 0
    stale_removed: int = 0
    """Lease and ``running/`` files of builds that ended without removing them."""
    quarantined_removed: int = 0
    """Corrupt artifacts a build moved aside (``corrupt/``)."""
    work_kept: list[WorkLeft] = field(default_factory=list)
    """Work dirs of nodes that did not finish, kept for a build to resume from."""
    work_removed: list[WorkLeft] = field(default_factory=list)
    """Those removed (``checkpoints``), their logs kept."""


def kept_builds(builds: list[dict], keep: int) -> list[dict]:
    """The ``keep`` most recent builds that succeeded, and every build since the oldest
    of them: a failed build does not count, or a failed try would cost the artifacts of
    the last build that worked (its own built nodes are kept all the same)."""
    if keep <= 0:
        return []
    kept, succeeded = [], 0
    for build in reversed(builds):  # the newest first
        kept.append(build)
        succeeded += build.get("ok", True) is not False
        if succeeded == keep:
            break
    return kept


def collect(
    store: Store,
    keep_builds: int = 5,
    dry_run: bool = False,
    scratch_age: float = 3600.0,
    checkpoints: bool = False,
) -> GcReport:
    """Remove artifacts no kept build references (``kept_builds``; and abandoned temp dirs, and with
    ``checkpoints`` the work dirs of nodes that did not finish, but their logs). Refuses
    while a build record cannot be read: the artifacts it names might be the newest."""
    unreadable = store.unreadable_builds()
    if unreadable:
        raise UserError(
            f"cannot read {', '.join(unreadable)} in {store.url}: gc would not know which "
            "artifacts that build kept, and they may be the newest. Remove the file (its "
            "build's artifacts are then kept only if a build of the last ones names them) "
            "and run gc again"
        )
    builds = kept_builds(store.builds(), keep_builds)
    wanted = {node["key"] for b in builds for node in b.get("nodes", {}).values()}
    wanted |= store.running_keys()  # a live build's nodes, committed before it is recorded
    records = store.artifacts()
    by_key = {r.key: r for r in records}
    for key in list(wanted):  # an alias keeps the artifact it reuses
        rec = by_key.get(key)
        if rec is not None and rec.alias_of is not None:
            wanted.add(rec.alias_of.key)
    report = GcReport()
    for rec in records:
        label = f"{rec.name} {rec.short}"
        if rec.key in wanted or live_holder(store.fs, f"leases/{rec.key}"):
            report.kept.append(label)
            continue
        report.removed.append(label)
        if not dry_run:
            store.remove_artifact(rec.key)
    for name in store.fs.listdir("corrupt"):  # moved aside to be looked at; gc is the end
        report.quarantined_removed += 1
        if not dry_run:
            store.fs.remove(f"corrupt/{name}")
    report.stale_removed = clear_killed(store, dry_run=dry_run)
    _collect_work(store, report, checkpoints, dry_run)
    now = time.time()
    held = {k[:12] for k in store.fs.listdir("leases") if live_holder(store.fs, f"leases/{k}")}
    for name in store.fs.listdir("tmp"):
        try:
            age = now - store.fs.mtime(f"tmp/{name}")
        except OSError:
            continue
        key = SCRATCH_KEY.search(name)
        # A node builds into its temp dir only while it holds its key's lease: with no
        # live holder (a killed build), the dir is abandoned now, not in an hour.
        abandoned = key is not None and key.group(1) not in held and age > SCRATCH_GRACE
        if abandoned or age > scratch_age:
            report.scratch_removed += 1
            if not dry_run:
                store.fs.remove(f"tmp/{name}")
    return report


def _collect_work(store: Store, report: GcReport, checkpoints: bool, dry_run: bool) -> None:
    """Sort the abandoned work dirs into kept and (``checkpoints``) removed. Each is
    removed under its key's lease, so that no build starts to resume from it meanwhile."""
    owner = owner_info(f"gc-{uuid.uuid4().hex}")
    for work in abandoned_work(store):
        if not checkpoints or dry_run:
            (report.work_removed if checkpoints else report.work_kept).append(work)
            continue
        lease = store.lease(work.key, owner)
        if lease is None:
            continue  # a build has just taken it
        with lease:
            _drop_work(work)
        report.work_removed.append(work)
