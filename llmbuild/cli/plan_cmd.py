"""``llmbuild plan``: what a build would do, node by node, and why."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llmbuild.cli.common import add_spec_arguments, add_store_argument, open_store
from llmbuild.plan.status import Plan


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_store_argument(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def plan_json(plan: Plan, spec: str, failed: dict[str, Any] | None = None) -> dict:
    failed = failed or {}
    return {
        "spec": spec,
        "spec_hash": plan.spec_hash,
        "nodes": [
            {
                "name": n.name,
                "key": n.key.key,
                "status": n.status,
                "reason": n.reason,
                "failed_last": n.name in failed,
                "changes": [{"field": c.field, "old": c.old, "new": c.new} for c in n.changes],
                "resources": {
                    "cpus": n.resources.cpus,
                    "gpus": n.resources.gpus,
                    "ranks": n.resources.ranks,
                },
            }
            for n in plan.nodes
        ],
        "summary": plan.summary,
    }


def render_plan(plan: Plan, spec: str, failed: dict[str, Any] | None = None) -> str:
    """The plan, a line per node; ``failed``: nodes whose last build at this key failed."""
    width = max((len(n.name) for n in plan.nodes), default=0)
    status_width = max((len(n.status) for n in plan.nodes), default=0)
    lines = [f"spec {plan.spec_hash[:12]}  {spec}"]
    for n in plan.nodes:
        line = f"  {n.status:<{status_width}}  {n.name:<{width}}  {n.key.short}"
        why = n.reason
        if n.name in (failed or {}):
            why += "; it failed when it last ran (`llmbuild status` shows its log)"
        lines.append(f"{line}  {why}".rstrip())
    lines.append(plan.summary)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from llmbuild.plan import plan_spec
    from llmbuild.spec.advice import warn
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides)
    warn(resolved)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    from llmbuild.cli.status_cmd import failures

    waiting = {n.name: n.key.key for n in planned.plan.nodes if n.status in ("build", "resume")}
    failed = failures(store, waiting, {}) if waiting else {}
    if args.json:
        print(json.dumps(plan_json(planned.plan, resolved.display, failed), indent=2))
    else:
        print(render_plan(planned.plan, resolved.display, failed))
    return 0
