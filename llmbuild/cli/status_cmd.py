"""``llmbuild status``: what is built for a spec, and its eval results across stages."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llmbuild.cli.common import add_spec_arguments, add_store_argument, open_store


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_store_argument(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def eval_table(store: Any, planned: Any) -> dict[str, dict[str, Any]]:
    """``{suite metric: {stage: value}}`` from the built eval nodes of a plan."""
    table: dict[str, dict[str, Any]] = {}
    for name, k in planned.keys.items():
        if not name.startswith("eval:"):
            continue
        found = store.lookup(k.key)
        if not found.cached:
            continue
        suite, stage = name[len("eval:") :].split("@", 1)
        for metric, value in sorted(found.target.metrics.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                table.setdefault(f"{suite}.{metric}", {})[stage] = value
    return table


def run(args: argparse.Namespace) -> int:
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    table = eval_table(store, planned)
    stages = [s.name for s in resolved.spec.stage]
    if args.json:
        print(
            json.dumps(
                {
                    "spec_hash": planned.plan.spec_hash,
                    "summary": planned.plan.summary,
                    "nodes": {n.name: n.status for n in planned.plan.nodes},
                    "evals": table,
                },
                indent=2,
            )
        )
        return 0
    print(f"spec {planned.plan.spec_hash[:12]}  {resolved.display}: {planned.plan.summary}")
    if not table:
        print("no eval results yet")
        return 0
    shown = [s for s in stages if any(s in row for row in table.values())]
    print("\n| metric | " + " | ".join(shown) + " |")
    print("| --- |" + " --- |" * len(shown))
    for metric, row in table.items():
        cells = [f"{row[s]:.4g}" if s in row else "" for s in shown]
        print(f"| {metric} | " + " | ".join(cells) + " |")
    return 0
