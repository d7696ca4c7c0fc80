"""``llmbuild status``: what is built for a spec: each stage's losses, its eval results
side by side, sample texts and fitted scaling laws; ``--compare`` puts a second spec or a
recorded build next to it, metric by metric."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from llmbuild.cli.common import add_spec_arguments, add_store_argument, open_store
from llmbuild.errors import UserError

# the stage metrics shown as columns, in this order, with their headers
STAGE_COLUMNS = {
    "parameters": "parameters",
    "adapter_parameters": "LoRA parameters",
    "steps": "steps",
    "loss": "train loss",
    "val_loss": "val loss",
    "calibration_loss": "calibration loss",
    "reward": "reward",
    "val_reward": "val reward",
    "informative": "informative groups",
    "margin": "margin",
    "accuracy": "accuracy",
    "val_accuracy": "val accuracy",
    "tokens_per_s": "tokens/s",
}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_store_argument(p)
    p.add_argument(
        "--compare",
        metavar="SPEC|HASH",
        help="another spec file, or the spec hash (prefix) of a recorded build: "
        "both side by side, metric by metric",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def built_records(
    store: Any, keys: dict[str, str], unusable: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """``{node: Record}`` for the nodes of ``keys`` (name -> key) built in the store;
    nodes whose record or files no longer verify go into ``unusable["corrupt"]`` with the
    problem, and those built from an input's outputs since replaced into
    ``unusable["stale"]``."""
    out = {}
    for name, key in keys.items():
        found = store.lookup(key)
        if found.cached and found.target is not None:
            out[name] = found.target
        elif found.state in ("corrupt", "stale") and unusable is not None:
            unusable.setdefault(found.state, {})[name] = found.problem
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def eval_table(records: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{suite.metric: {stage: value}}`` from the built ``eval:<suite>@<stage>`` nodes; a
    perplexity suite's losses get their perplexity beside them."""
    table: dict[str, dict[str, Any]] = {}
    for name, rec in records.items():
        if not name.startswith("eval:") or "@" not in name:
            continue
        suite, stage = name[len("eval:") :].split("@", 1)
        for metric, value in sorted(rec.metrics.items()):
            if metric == "samples" or not _number(value):
                continue  # a count of samples says nothing: their texts are shown instead
            table.setdefault(f"{suite}.{metric}", {})[stage] = value
            if metric.endswith(".loss") and f"{metric[:-5]}.perplexity" not in rec.metrics:
                table.setdefault(f"{suite}.{metric[:-5]}.perplexity", {})[stage] = math.exp(value)
    return table


def stage_table(records: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{stage: {metric: value}}`` for the built stages: their training measures. A
    distill stage's train loss is its student's own cross-entropy (``ce``), the measure its
    val loss takes, not the objective that mixes in the teacher's KL."""
    table = {}
    for name, rec in records.items():
        if name.startswith("stage:"):
            metrics = {
                **rec.metrics,
                **({"loss": rec.metrics["ce"]} if "ce" in rec.metrics else {}),
            }
            table[name.split(":", 1)[1]] = {k: metrics[k] for k in STAGE_COLUMNS if k in metrics}
    return table


EXPORT_COLUMNS = {
    "quantization": "quantization",
    "size": "size (MB)",
    "perplexity": "held-out perplexity",
    "unquantized_perplexity": "unquantized",
    "perplexity_ratio": "ratio",
}


def export_table(records: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{export: {column: value}}`` for the built exports whose file was measured against
    the unquantized model (GGUF and ONNX): size on disk and held-out perplexity."""
    out = {}
    for name, rec in sorted(records.items()):
        m = rec.metrics
        if name.startswith("export:") and "perplexity_ratio" in m:
            row = {k: m[k] for k in EXPORT_COLUMNS if k in m}
            kind = m.get("quantization") or m.get("quantize")
            row["quantization"] = "float32" if kind == "none" else kind
            size = m.get("gguf_bytes", m.get("onnx_bytes"))
            if size is not None:
                row["size"] = round(size / 1e6, 3)
            out[name[len("export:") :]] = row
    return out


def sample_texts(store: Any, records: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """``{node: [{prompt, completion}]}`` for the built samples evals."""
    out = {}
    for name, rec in records.items():
        if not (name.startswith("eval:") and "samples" in rec.metrics):
            continue  # a remote store fetches what local_dir is asked for
        path = store.local_dir(rec) / "results.json"
        if path.exists():
            results = json.loads(path.read_text()).get("results")
            if isinstance(results, list):
                out[name] = results
    return out


def scaling_laws(records: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{suite: {points, E, A, B, alpha, beta}}`` for the built scaling fits."""
    out = {}
    for name, rec in records.items():
        if name.startswith("eval:") and "@" not in name and "points" in rec.metrics:
            fit = {
                k.split(".", 1)[1]: v for k, v in rec.metrics.items() if k.startswith("approach3.")
            }
            out[name[len("eval:") :]] = {"points": rec.metrics["points"], **fit}
    return out


def scaling_line(suite: str, law: dict[str, Any]) -> str:
    """A scaling fit's line: its points and law, or that none was fitted."""
    line = f"scaling {suite}: {law['points']} points"
    if "E" not in law:
        return line + "; no law fitted (llmbuild scaling says why)"
    return line + (
        f"; L(N, D) = {law['E']:.3f} + {law['A']:.4g} / N^{law['alpha']:.3f}"
        f" + {law['B']:.4g} / D^{law['beta']:.3f}  (llmbuild scaling for optima)"
    )


def flat_metrics(records: dict[str, Any]) -> dict[str, float]:
    """``{node.metric: value}``: every number a build recorded, for comparing two; an
    eval's losses with their perplexity beside them, as ``eval_table`` shows them."""
    out = {}
    for name, rec in sorted(records.items()):
        for metric, value in sorted(rec.metrics.items()):
            if not _number(value):
                continue
            out[f"{name}.{metric}"] = value
            derived = f"{metric[:-5]}.perplexity"
            if name.startswith("eval:") and metric.endswith(".loss") and derived not in rec.metrics:
                out[f"{name}.{derived}"] = math.exp(value)
    return out


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if not _number(value):
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if 1000 <= abs(value) < 1e7 else f"{value:.4g}"  # 27,630 tokens/s


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _clip(text: str, width: int = 72) -> str:
    text = json.dumps(text)[1:-1]
    return text if len(text) <= width else text[: width - 3] + "..."


def _other(args: argparse.Namespace, store: Any) -> tuple[str, dict[str, str]]:
    """The thing ``--compare`` names, as (label, {node: key})."""
    what = args.compare
    if Path(what).is_file():
        from llmbuild.plan import plan_spec
        from llmbuild.spec.load import load_spec

        resolved = load_spec(what, [])
        planned = plan_spec(resolved, store=store, cache=store.cache)
        return resolved.display, {n: k.key for n, k in planned.keys.items()}
    build = store.find_build(what) if len(what) >= 4 else None
    if build is None:
        raise UserError(
            f"--compare {what!r} is neither a spec file nor the spec hash of a build in "
            f"{store.url} (see `llmbuild runs`)"
        )
    nodes = build.get("nodes", {})
    return f"build {build['spec_hash'][:12]}", {n: v["key"] for n, v in nodes.items()}


def _compare(
    label: str, mine: dict[str, float], other_label: str, theirs: dict[str, float]
) -> None:
    names = sorted(set(mine) | set(theirs))
    if not names:
        print("nothing built in either to compare")
        return
    rows = []
    for name in names:
        a, b = mine.get(name), theirs.get(name)
        change = ""
        if a is not None and b is not None and a != b:
            change = f"{b - a:+.4g}" + (f" ({(b - a) / abs(a):+.1%})" if a else "")
        rows.append(
            [name, _cell(a) if a is not None else "-", _cell(b) if b is not None else "-", change]
        )
    print()
    print("\n".join(_markdown(["metric", label, other_label, "change"], rows)))


def failures(store: Any, keys: dict[str, str], built: Any) -> dict[str, str | None]:
    """``{node: its log}`` for the nodes not built whose last attempt at this key failed
    (a failure leaves no artifact, only the build's record and the node's log)."""
    out: dict[str, str | None] = {}
    for build in reversed(store.builds()):
        for name, node in build.get("nodes", {}).items():
            if name in out or name in built or keys.get(name) != node.get("key"):
                continue
            if node.get("state") == "failed":
                log = store.work_dir(node["key"], create=False) / "node.log"
                out[name] = str(log) if log.is_file() else None
            elif node.get("state") in ("built", "cached", "reused"):
                out[name] = ""  # built since: not a failure (gone from the store now)
    return {n: log for n, log in out.items() if log != ""}


def run(args: argparse.Namespace) -> int:
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides, missing_ok=True)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    unusable: dict[str, dict[str, str]] = {}
    records = built_records(store, {n: planned.held_key(n) for n in planned.keys}, unusable)
    corrupt, stale = unusable.get("corrupt", {}), unusable.get("stale", {})
    notes = {n: list(r.notes) for n, r in records.items() if r.notes}
    failed = failures(store, {n: k.key for n, k in planned.keys.items()}, records)
    resumes = {  # kept checkpoints: "resume from step N"
        n.name: (n.key.key, n.reason.split(";")[0])
        for n in planned.plan.nodes
        if n.status == "resume"
    }
    evals, stages = eval_table(records), stage_table(records)
    exports = export_table(records)
    samples, laws = sample_texts(store, records), scaling_laws(records)
    compared = None
    if args.compare:
        label, keys = _other(args, store)
        compared = (label, flat_metrics(built_records(store, keys)))
    if args.json:
        data = {
            "spec_hash": planned.plan.spec_hash,
            "summary": planned.plan.summary,
            "nodes": {n.name: n.status for n in planned.plan.nodes},
            "stages": stages,
            "evals": evals,
            "exports": exports,
            "samples": samples,
            "scaling": laws,
            "notes": notes,
            "corrupt": corrupt,
            "stale": stale,
            "failed": failed,
            "resume": {n: resume for n, (_, resume) in resumes.items()},
            "unavailable": {n: str(p) for n, p in planned.unavailable.items()},
            "artifacts": {n: str(store.artifact_path(r.key)) for n, r in records.items()},
        }
        if compared:
            data["compare"] = {"with": compared[0], "metrics": flat_metrics(records),
                               "other": compared[1]}  # fmt: skip
        print(json.dumps(data, indent=2))
        return 0
    print(f"spec {planned.plan.spec_hash[:12]}  {resolved.display}: {planned.plan.summary}")
    if compared:
        _compare(resolved.display, flat_metrics(records), *compared)
        return 0
    for node, problem in corrupt.items():
        print(f"corrupt  {node}: {problem} (the next build moves it aside and rebuilds it)")
    for node, problem in stale.items():
        print(f"stale    {node}: {problem} (the next build moves it aside and rebuilds it)")
    for problem in resolved.missing:
        # a node's problem names the field (eval[0].files), the missing one its item
        left = [
            n
            for n, p in planned.unavailable.items()
            if tuple(problem.path[: len(p.path)]) == tuple(p.path)
        ]
        print(f"missing  {problem}" + (f" (not shown: {', '.join(left)})" if left else ""))
    for node, log in failed.items():
        then = f" (the next build will {resumes[node][1]})" if node in resumes else ""
        print(f"failed   {node} when it last ran{then}" + (f"; its log: {log}" if log else ""))
    for node, (key, resume) in resumes.items():
        if node not in failed:  # a build stopped or killed while it trained
            log = store.work_dir(key, create=False) / "node.log"
            print(
                f"stopped  {node} before it ended; the next build will {resume}"
                + (f"; its log: {log}" if log.is_file() else "")
            )
    if not records:
        if not planned.unavailable:
            print("nothing built yet")
        elif len(planned.unavailable) == len(planned.names):
            print("nothing to show: every node is made from a missing file")
        else:
            print("nothing to show: the other nodes are not built yet")
        return 0
    order = [s.name for s in resolved.spec.stage]
    stages = {s: m for s, m in stages.items() if m}  # an import's, a sweep's: nothing to show
    if stages:
        shown = [c for c in STAGE_COLUMNS if any(c in m for m in stages.values())]
        rows = [[s] + [_cell(stages[s].get(c)) for c in shown] for s in order if s in stages]
        print()
        print("\n".join(_markdown(["stage"] + [STAGE_COLUMNS[c] for c in shown], rows)))
    if evals:
        cols = [s for s in order if any(s in row for row in evals.values())]
        rows = [[m] + [_cell(row.get(s)) for s in cols] for m, row in evals.items()]
        print()
        print("\n".join(_markdown(["metric"] + cols, rows)))
    elif not stages:
        print("no eval results yet")
    if exports:
        rows = [[e] + [_cell(row.get(c)) for c in EXPORT_COLUMNS] for e, row in exports.items()]
        print()
        print("\n".join(_markdown(["export"] + list(EXPORT_COLUMNS.values()), rows)))
    for node, results in samples.items():
        print(f"\n{node}:")
        for r in results:
            print(f"  {_clip(r.get('prompt', ''), 30)} -> {_clip(r.get('completion', ''))}")
    for suite, law in laws.items():
        print(f"\n{scaling_line(suite, law)}")
    for node, said in notes.items():
        for note in said:
            print(f"\nnote {node}: {note}")
    print("\nartifacts: llmbuild show NODE; loss curves: loss.png and tensorboard/ in each stage")
    return 0
