"""Garbage collection: keep what the most recent builds reference, remove the rest."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from llmbuild.errors import UserError
from llmbuild.store.lease import clear_stale, live_holder
from llmbuild.store.store import Store

SCRATCH_KEY = re.compile(r"-([0-9a-f]{12})-[a-z0-9_]+$")
"""A node's temp dir name: ``<node>-<key12>-<random>`` (``Store.scratch``)."""
SCRATCH_GRACE = 5.0
"""Seconds a fresh temp dir is left alone, whatever its lease says."""


@dataclass
class GcReport:
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    scratch_removed: int = 0
    stale_removed: int = 0
    quarantined_removed: int = 0
    """Corrupt artifacts a build moved aside (``corrupt/``)."""
    """Lease and ``running/`` files of builds that ended without removing them."""


def collect(
    store: Store, keep_builds: int = 5, dry_run: bool = False, scratch_age: float = 3600.0
) -> GcReport:
    """Remove artifacts no kept build references (and abandoned temp dirs). Refuses
    while a build record cannot be read: the artifacts it names might be the newest."""
    unreadable = store.unreadable_builds()
    if unreadable:
        raise UserError(
            f"cannot read {', '.join(unreadable)} in {store.url}: gc would not know which "
            "artifacts that build kept, and they may be the newest. Remove the file (its "
            "build's artifacts are then kept only if a build of the last ones names them) "
            "and run gc again"
        )
    builds = store.builds()[-keep_builds:] if keep_builds > 0 else []
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
    for folder in ("leases", "running"):
        for name in store.fs.listdir(folder):
            rel = f"{folder}/{name}"
            if name.endswith(".takeover") or live_holder(store.fs, rel) is not None:
                continue
            if dry_run or clear_stale(store.fs, rel):
                report.stale_removed += 1
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
