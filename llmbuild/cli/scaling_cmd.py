"""``llmbuild scaling``: the fitted scaling laws of a spec's built sweeps, and the
compute-optimal model size and tokens for a compute budget."""

from __future__ import annotations

import argparse
import json

from llmbuild.cli.common import (
    add_spec_arguments,
    add_store_argument,
    build_command,
    open_store,
    ranged,
)
from llmbuild.errors import UserError


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_store_argument(p)
    p.add_argument(
        "--budget",
        type=ranged(float, 0, above=True),
        default=None,
        help="a training compute budget in FLOPs, e.g. 1e18",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from llmbuild.backends.scaling.fit import (
        Approach3Fit,
        compute_optimal_approach3,
        optimum_problem,
        points_flops_per_token,
    )
    from llmbuild.backends.scaling.run import FIT, fit_lines
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    fits = [s for s in resolved.spec.eval if s.kind == "scaling"]
    if not fits:
        raise UserError(f"{resolved.display} has no sweep (a [[stage]] of kind 'sweep')")
    report = {}
    for suite in fits:
        node = f"eval:{suite.name}"
        found = store.lookup(planned.held_key(node))
        if found.state in ("corrupt", "stale"):
            raise UserError(
                f"{node} is {found.state} in the store ({found.problem}): run "
                f"`{build_command(args)}` to rebuild it"
            )
        if not found.cached:
            from llmbuild.cli.status_cmd import failures

            failed = failures(store, {node: planned.keys[node].key}, {})
            if node in failed:
                log = f" (its log: {failed[node]})" if failed[node] else ""
                raise UserError(f"{node} failed when it last ran{log}: `llmbuild status` says why")
            upstream = planned.graph[node].upstream
            failed = failures(store, {u: planned.keys[u].key for u in upstream}, {})
            if failed:  # the sweep's points: a build again fails the same way
                raise UserError(
                    f"{node} is not fitted: {', '.join(sorted(failed))} failed when last "
                    "built (`llmbuild status` says why); mend the spec, then build it again"
                )
            raise UserError(f"{node} is not built yet: run `{build_command(args)}` first")
        data = json.loads((store.local_dir(found.target) / FIT).read_text())
        entry: dict = {"points": len(data["points"]), "lines": fit_lines(data)}
        if data.get("excluded"):
            entry["excluded"] = {p["stage"]: p["excluded"] for p in data["excluded"]}
        a3 = data.get("approach3")
        if a3:
            entry["approach3"] = {k: a3[k] for k in ("E", "A", "B", "alpha", "beta")}
            entry["approach3_intervals"] = a3.get("intervals")
        if data.get("approach2"):
            entry["approach2"] = {k: data["approach2"][k] for k in ("a", "b", "k_n", "k_d")}
        for how in ("approach3", "approach2"):
            if f"{how}_error" in data:
                entry[f"{how}_error"] = data[f"{how}_error"]
        budget = args.budget or (data.get("optimum") or {}).get("budget")
        spent = [p["budget"] or p["flops"] for p in data["points"]]
        if budget is not None and spent:
            if budget > 10 * max(spent):
                entry["extrapolation"] = budget / max(spent)
            elif budget < min(spent) / 10:
                entry["extrapolation"] = budget / min(spent)
        if args.budget is not None:
            if a3:
                fit = Approach3Fit(**{k: a3[k] for k in ("E", "A", "B", "alpha", "beta")},
                                   loss=a3["loss"], n_points=len(data["points"]), intervals=None)  # fmt: skip
                if optimum_problem(fit) is None:
                    points = data["points"]
                    per_token = points_flops_per_token(
                        [p["non_embedding_params"] for p in points],
                        [p["flops"] / p["tokens"] for p in points],
                    )
                    n, d = compute_optimal_approach3(fit, args.budget, per_token)
                    _optimum(entry, "approach3", n, d)
            a2 = data.get("approach2")
            if a2:
                n, d = a2["k_n"] * args.budget ** a2["a"], a2["k_d"] * args.budget ** a2["b"]
                _optimum(entry, "approach2", n, d)
            entry["budget"] = args.budget
        elif data.get("optimum"):  # the sweep's fit_budget, found when it was fitted
            entry["budget"] = data["optimum"]["budget"]
            for how in ("approach3", "approach2"):
                found = data["optimum"].get(how)
                if found and "error" in found:
                    entry[f"optimum_{how}_error"] = found["error"]
                elif found:
                    entry[f"optimum_{how}"] = found
        report[suite.name] = entry
    if args.json:
        shown = {n: {k: v for k, v in e.items() if k != "lines"} for n, e in report.items()}
        print(json.dumps(shown, indent=2))
        return 0
    for name, entry in report.items():
        points = entry.pop("points")
        print(f"sweep {name}: {points} point{'' if points == 1 else 's'}")
        for stage, why in entry.pop("excluded", {}).items():
            print(f"  left out: {stage}: {why}")
        for line in entry.pop("lines"):
            print(f"  {line}")
        optima = any(f"optimum_{how}" in entry for how in ("approach3", "approach2"))
        budget = entry.get("budget")
        if "extrapolation" in entry and optima:
            times = entry["extrapolation"]
            side = (f"{times:.3g}x the sweep's largest" if times > 1
                    else f"1/{1 / times:.3g} of the sweep's smallest")  # fmt: skip
            print(
                f"  note: {budget:.3g} FLOPs is {side} compute: the optimum below "
                "extrapolates the law that far"
            )
        for how in ("approach3", "approach2"):
            opt = entry.get(f"optimum_{how}")
            if f"optimum_{how}_error" in entry:
                print(f"  {how[:-1]} {how[-1]}: {entry[f'optimum_{how}_error']}")
            if opt:
                print(
                    f"  compute-optimal at {budget:.3g} FLOPs ({how[:-1]} {how[-1]}): "
                    f"N = {opt['params']:.3g} parameters (non-embedding), D = {opt['tokens']:.3g} tokens"
                )
    return 0


def _optimum(entry: dict, how: str, params: float, tokens: float) -> None:
    """The law's optimum into ``entry``; or why there is none to show."""
    from llmbuild.backends.scaling.fit import tiny_optimum

    problem = tiny_optimum(params, tokens)
    if problem is None:
        entry[f"optimum_{how}"] = {"params": params, "tokens": tokens}
    else:
        entry[f"optimum_{how}_error"] = problem
