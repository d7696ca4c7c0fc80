"""``runs``, ``show`` and ``gc``: looking into the store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llmbuild.cli.common import add_store_argument, open_store, ranged
from llmbuild.errors import UserError, did_you_mean, human_bytes


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_store_argument(p, "in the current directory")
    if name == "show":
        p.add_argument(
            "what",
            metavar="NODE|KEY|HASH",
            help="a node name, a key (prefix) or a build's spec hash (prefix)",
        )
    if name == "gc":
        p.add_argument(
            "--keep",
            type=ranged(int, 0),
            default=5,
            help="keep everything the N most recent builds that succeeded reference, and "
            "what the failed builds since built (default 5)",
        )
        p.add_argument("--dry-run", action="store_true", help="list what would be removed")
        p.add_argument(
            "--checkpoints",
            action="store_true",
            help="also remove the work of training that did not finish (a killed build's "
            "resumable checkpoints and partial files, in work/KEY/), which the next build "
            "would resume from: it starts over instead. Their logs stay; what a running "
            "build uses is never removed",
        )
    if name in ("runs", "show"):
        p.add_argument("--json", action="store_true", help="print JSON")


def _store(args: argparse.Namespace):
    return open_store(args, Path.cwd() / "spec.toml")


def run(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.command in ("runs", "gc") and not store.fs.exists(""):  # a misspelt --store, say
        raise UserError(f"no store at {store.url}")
    if args.command == "runs":
        builds = store.builds()
        for name in store.unreadable_builds():
            print(f"warning: {name} cannot be read: that build is not listed", file=sys.stderr)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            k: b.get(k)
                            for k in ("spec_hash", "spec_path", "started", "finished", "ok")
                        }
                        for b in builds
                    ],
                    indent=2,
                )
            )
            return 0
        if not builds:
            print(f"no builds recorded in {store.url}")
        for b in builds:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(b.get("finished") or 0))
            states = [n.get("state") for n in b.get("nodes", {}).values()]
            built = sum(s == "built" for s in states)
            state = "ok" if b.get("ok") else "INTERRUPTED" if b.get("interrupted") else "FAILED"
            print(
                f"{b['spec_hash'][:12]}  {when}  {state:<11}  "
                f"{len(states)} nodes, {built} built  {b.get('spec_path')}"
            )
        _unrecorded(store, builds)
        return 0
    if args.command == "show":
        return _show(store, args)
    from llmbuild.store.gc import collect

    report = collect(
        store, keep_builds=args.keep, dry_run=args.dry_run, checkpoints=args.checkpoints
    )
    verb = "would remove" if args.dry_run else "removed"
    for label in report.removed:
        print(f"{verb} {label}")
    print(
        f"{verb} {len(report.removed)} artifacts and {report.scratch_removed} abandoned "
        f"temp dirs; kept {len(report.kept)}"
    )
    if report.quarantined_removed:
        print(f"{verb} {report.quarantined_removed} corrupt artifacts moved aside by builds")
    if report.stale_removed:
        print(f"{verb} {report.stale_removed} lock files of builds that were killed")
    if report.work_kept:
        print(
            f"kept {_work_count(report.work_kept)}, for the next build to resume from "
            "(--checkpoints removes it):"
        )
    elif report.work_removed:
        print(f"{verb} {_work_count(report.work_removed)}; the logs stay:")
    for work in report.work_kept or report.work_removed:
        print(f"  {work.node or 'a node'}: {work.what} in {work.path} ({human_bytes(work.size)})")
    return 0


def _work_count(works: list) -> str:
    """``the work of 2 nodes that did not finish (1.5 GiB)``."""
    nodes = "1 node" if len(works) == 1 else f"{len(works)} nodes"
    return f"the work of {nodes} that did not finish ({human_bytes(sum(w.size for w in works))})"


def _unrecorded(store, builds: list[dict]) -> None:
    """Name the work a build left that was killed before it could be recorded."""
    from llmbuild.store.gc import abandoned_work

    recorded = {n.get("key") for b in builds for n in b.get("nodes", {}).values()}
    for work in abandoned_work(store):
        if work.key not in recorded:
            print(f"not recorded: a build was killed making {work.node or 'a node'}: {work.where}")


REBUILT = "a build that needs it moves it aside and rebuilds it"


def _show(store, args: argparse.Namespace) -> int:
    what = args.what.strip()
    if not what:
        raise UserError("show what? give a node name, a key (prefix) or a spec hash (prefix)")
    build = store.find_build(what) if len(what) >= 4 else None
    built = store.artifacts()
    records = [r for r in built if r.name == what]  # a full name is that node alone
    records = records or [
        r for r in built if r.key.startswith(what) or r.name.split(":", 1)[-1] == what
    ]
    named = sorted({r.name for r in records})
    if len(named) > 1 or (build is not None and records):
        also = [f"build {build['spec_hash'][:12]}"] if build is not None and records else []
        raise UserError(f"{what!r} is ambiguous: {', '.join(named + also)}")
    if build is None and not records:
        keys = [k for k in store.fs.listdir("artifacts") if k.startswith(what)]
        # a node's name, as the builds recorded it: its record may be what is corrupt
        builds = store.builds()
        keys += [
            n["key"]
            for b in builds
            for name, n in b.get("nodes", {}).items()
            if what in (name, name.split(":", 1)[-1]) and n.get("key")
        ]
        for key in dict.fromkeys(keys):
            found = store.lookup(key)  # there, but its record does not verify
            if found.state == "corrupt":
                raise UserError(f"artifact {key[:12]} is corrupt: {found.problem} ({REBUILT})")
        _not_built(store, what)
        _recorded_only(store, builds, what)
        names = {r.name for r in built}
        if not names and not builds:
            hint = ": nothing is built in this store; name the one the build used with --store"
        else:
            hint = did_you_mean(what, names | {n.split(":", 1)[-1] for n in names})
        raise UserError(
            f"nothing named {what!r} in {store.url} (a node name, key or spec hash){hint}"
        )
    if build is not None and not records:
        print(json.dumps(build, indent=2) if args.json else _build_text(build))
        return 0
    rec = max(records, key=lambda r: r.timings.get("finished", 0))
    if args.json:
        print(json.dumps(rec.model_dump(mode="json"), indent=2))
        return 0
    print(f"{rec.name}  {rec.key}")
    others = sorted({r.key[:12] for r in records if r.key != rec.key})
    if others:
        print(
            f"  the newest of {len(others) + 1} built in this store; the others: "
            f"{', '.join(others)} (show KEY for one of them)"
        )
    print(f"  artifact {store.artifact_path(store.resolve(rec).key)}")
    found = store.lookup(rec.key)
    if found.state in ("corrupt", "stale"):
        print(f"  {found.state.upper()}: {found.problem} ({REBUILT})")
    if rec.alias_of is not None:
        print(f"  reuses {rec.alias_of.node} {rec.alias_of.key[:12]} (early cut-off)")
    finished = time.localtime(rec.timings.get("finished", 0))
    print(
        f"  built {time.strftime('%Y-%m-%d %H:%M:%S', finished)}"
        f" in {rec.timings.get('seconds', 0)}s by build {(rec.build or '?')[:8]}"
    )
    for slot, ref in rec.inputs.items():
        print(f"  input {slot}: {ref.node} {ref.key[:12]}")
    for e in rec.outputs:
        print(f"  output {e.path}  {e.size} bytes  blake3 {e.blake3[:16]}")
    if rec.metrics:
        print(f"  metrics {json.dumps(rec.metrics)}")
    phases = {k: v for k, v in rec.timings.items() if k not in ("started", "finished", "seconds")}
    if phases:  # where the time went, and the threads each part computed with
        print("  timings " + ", ".join(f"{k} {v:g}" for k, v in phases.items()))
    for note in rec.notes:
        print(f"  note {note}")
    if store.fs.exists(store.log_path(rec.key)):
        print(f"  log {store.url.rstrip('/')}/{store.log_path(rec.key)}")
    env = rec.environment
    if env:
        print("  environment " + ", ".join(f"{k} {v}" for k, v in env.items() if v and k != "git"))
    return 0


def _recorded_only(store, builds: list[dict], what: str) -> None:
    """For a node a build of this store names but whose artifact is not here (left out
    of that build, failed, or removed by gc since): say so, as a ``UserError``."""
    named = [
        (name, node)
        for b in builds
        for name, node in b.get("nodes", {}).items()
        if what in (name, name.split(":", 1)[-1])
    ]
    if not named or len({name for name, _ in named}) > 1:
        return
    name, last = named[-1]
    why = {
        "not selected": "the last build that names it left it out (--only, --until)",
        "failed": "it failed when it last ran (`llmbuild status` shows its log)",
        "skipped": "the last build that names it skipped it, as an input of it failed",
    }.get(last.get("state", ""), "its artifact was removed since (gc keeps what kept builds use)")
    raise UserError(f"{name} is not built in {store.url}: {why}")


def _not_built(store, what: str) -> None:
    """For a node with no artifact whose work a build left (killed, or failed, or running
    now): say where its checkpoint and log are, as a ``UserError``."""
    from llmbuild.store.gc import work_left
    from llmbuild.store.lease import describe

    found = [
        w
        for w in work_left(store)
        if w.what
        and (
            (len(what) >= 4 and w.key.startswith(what))
            or (w.node is not None and what in (w.node, w.node.split(":", 1)[-1]))
        )
    ]
    if not found:
        return
    lines = []
    for w in found:
        holder = store.lease_holder(w.key)
        being = f"; being built now by {describe(holder)}" if holder else ""
        resumes = "; the next build resumes from it" if w.step is not None and not holder else ""
        lines.append(f"{w.where}{being}{resumes}")
    said = lines[0] if len(lines) == 1 else "".join(f"\n  {line}" for line in lines)
    raise UserError(f"{found[0].node or what} is not built in {store.url}: {said}")


def _build_text(build: dict) -> str:
    lines = [f"build {build['spec_hash']}  {build.get('spec_path')}"]
    for name, node in build.get("nodes", {}).items():
        lines.append(f"  {node.get('state', '?'):<12} {name:<28} {node['key'][:12]}")
    return "\n".join(lines)
