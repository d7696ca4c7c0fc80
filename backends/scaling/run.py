"""The ``scaling`` node: each point's held-out loss (its stage's ``val_loss``), parameter
count N (with and without embeddings, from its architecture) and training tokens D; the
fits of ``fit.py`` over them; ``fit.json``, ``results.md`` and ``scaling.png``."""

from __future__ import annotations

import json
from typing import Any

from llmbuild.backends.megatron.run import uniform_loss
from llmbuild.backends.megatron.sizes import count_params
from llmbuild.backends.scaling.config import ScalingConfig
from llmbuild.backends.scaling.fit import flops_per_token

from llmbuild.run.context import RunContext

FIT = "fit.json"


def point(name: str, artifact: Any, suite: Any) -> dict[str, Any]:
    from llmbuild.backends.megatron.artifact import StageArtifact

    stage = StageArtifact.open(artifact)
    arch = stage.architecture
    counts = count_params(
        arch.layers, arch.hidden, arch.heads, arch.kv_heads, arch.ffn_hidden, stage.vocab_size,
        arch.seq_len, arch.activation == "swiglu", arch.tie_embeddings, arch.position,
    )  # fmt: skip
    loss = artifact.record.metrics.get("val_loss")
    if loss is None:
        raise ValueError(f"{name} recorded no val_loss: its data has no validation split")
    tokens = suite.tokens[name]
    n = counts["non_embedding_params"]
    return {
        "stage": name,
        "vocab_size": stage.vocab_size,
        "params": counts["params"],
        "non_embedding_params": n,
        "tokens": tokens,
        "flops": flops_per_token(n, arch.layers, arch.hidden, arch.seq_len) * tokens,
        "budget": suite.budgets.get(name),
        "loss": float(loss),
    }


def usable(points: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The points a law can be fitted to, and those left out, each with why: a held-out
    loss at or above ln V (guessing every token alike) is a run that diverged short of
    overflowing or learned nothing, not a measure of what its size and data can reach;
    fitted, it bends the law (and can make a sweep look convex that is not)."""
    kept, out = [], []
    for p in points:
        bound = uniform_loss(p["vocab_size"])
        if p["loss"] < bound:
            kept.append(p)
            continue
        why = (
            f"its held-out loss {p['loss']:.4g} is no better than guessing each of its "
            f"{p['vocab_size']} tokens alike (ln {p['vocab_size']} = {bound:.3f}): it diverged "
            "or learned nothing"
        )
        out.append({**p, "excluded": why})
    return kept, out


LOOSE = (
    "an exponent's interval reaches 0 or spans more than 10x: the sweep does not pin this "
    "law down (more points, sizes or budgets would)"
)


def loose(intervals: dict[str, Any] | None) -> bool:
    """Whether the bootstrap intervals leave an exponent of the law undetermined."""
    exponents = [intervals[k] for k in ("alpha", "beta") if k in (intervals or {})]
    return any(not (lo > 0 and hi <= 10 * lo) for lo, hi in exponents)


def fit_lines(out: dict[str, Any]) -> list[str]:
    """The fits of a ``fit.json`` as text: each law with its bootstrap intervals, or why
    it was not fitted (``llmbuild scaling`` prints the same)."""
    lines = []
    a3 = out.get("approach3")
    if a3:
        lines.append(
            f"approach 3: L = {a3['E']:.3f} + {a3['A']:.4g} / N^{a3['alpha']:.3f}"
            f" + {a3['B']:.4g} / D^{a3['beta']:.3f}"
        )
        intervals = a3.get("intervals")
        if intervals:
            spans = ", ".join(
                f"{k} {intervals[k][0]:.3g} to {intervals[k][1]:.3g}"
                for k in ("E", "A", "B", "alpha", "beta")
                if k in intervals
            )
            lines.append(f"  bootstrap 90% intervals: {spans}")
            if loose(intervals):
                lines.append(f"  {LOOSE}")
        if "approach3_optimum_error" in out:
            lines.append(f"  {out['approach3_optimum_error']}")
    elif "approach3_error" in out:
        lines.append(f"approach 3: not fitted: {out['approach3_error']}")
    a2 = out.get("approach2")
    if a2:
        lines.append(
            f"approach 2: N_opt = {a2['k_n']:.3g} C^{a2['a']:.3f}, "
            f"D_opt = {a2['k_d']:.3g} C^{a2['b']:.3f}"
        )
    elif "approach2_error" in out:
        lines.append(f"approach 2: not fitted: {out['approach2_error']}")
    return lines


def run(ctx: RunContext[ScalingConfig]) -> None:
    import numpy as np
    from llmbuild.backends.scaling import fit

    suite = ctx.config.suite
    measured = [point(slot.split(":", 1)[1], a, suite) for slot, a in sorted(ctx.inputs.items())]
    points, excluded = usable(measured)
    for p in excluded:
        ctx.note(f"{p['stage']} is left out of the fits: {p['excluded']}")
    N = np.array([p["non_embedding_params"] for p in points], dtype=float)
    D = np.array([p["tokens"] for p in points], dtype=float)
    L = np.array([p["loss"] for p in points], dtype=float)
    out: dict[str, Any] = {"points": points, "excluded": excluded}
    fit3 = fit2 = None
    fixed = fit.unfittable(N, D)
    if fixed is not None:
        out["approach3_error"] = fixed
        ctx.note(f"approach 3 not fitted: {out['approach3_error']}")
    elif len(points) >= len(fit.PARAMETERS):
        fit3 = fit.fit_approach3(N, D, L, bootstrap=suite.bootstrap, seed=0)
        out["approach3"] = {
            **{k: getattr(fit3, k) for k in fit.PARAMETERS},
            "loss": fit3.loss,
            "intervals": fit3.intervals,
        }
        ctx.metrics.update({f"approach3.{k}": getattr(fit3, k) for k in fit.PARAMETERS})
        if loose(fit3.intervals):  # said where the law is shown: status, scaling
            ctx.note(f"approach 3: {LOOSE}")
        problem = fit.optimum_problem(fit3)
        if problem is not None:
            out["approach3_optimum_error"] = problem
            ctx.note(f"approach 3: {problem}")
    if fit3 is None and "approach3_error" not in out:
        out["approach3_error"] = (
            f"it fits {len(fit.PARAMETERS)} parameters and needs at least "
            f"{len(fit.PARAMETERS)} points (the sweep has {len(points)}"
            + (f" it can use, {len(excluded)} left out)" if excluded else ")")
        )
        ctx.log.warning("approach 3 not fitted: %s", out["approach3_error"])
    if not suite.budgets:
        out["approach2_error"] = "it needs compute budgets (the sweep's `budgets`)"
    else:
        rows = [
            fit.ScalingPoint(p["budget"], p["non_embedding_params"], p["tokens"], p["loss"])
            for p in points
        ]
        try:
            fit2 = fit.fit_approach2(rows)
        except ValueError as e:  # a budget whose sizes do not straddle its optimum
            out["approach2_error"] = str(e)
            ctx.log.warning("approach 2 not fitted: %s", e)
    if fit2 is not None:
        out["approach2"] = {
            "a": fit2.a,
            "b": fit2.b,
            "k_n": fit2.k_n,
            "k_d": fit2.k_d,
            "minima": [
                {"budget": m.budget, "params": m.params, "tokens": m.tokens, "loss": m.loss}
                for m in fit2.minima
            ],
        }
        ctx.metrics.update({"approach2.a": fit2.a, "approach2.b": fit2.b})
    if suite.fit_budget is not None:
        optimum: dict[str, Any] = {"budget": suite.fit_budget}
        if fit3 is not None and "approach3_optimum_error" not in out:
            per_token = fit.points_flops_per_token(N, [p["flops"] / p["tokens"] for p in points])
            optimum["approach3"] = fit.compute_optimal_approach3(fit3, suite.fit_budget, per_token)
        if fit2 is not None:
            optimum["approach2"] = fit2.predict(suite.fit_budget)
        for how in ("approach3", "approach2"):
            if how not in optimum:
                continue
            n, d = optimum[how]
            problem = fit.tiny_optimum(n, d)
            optimum[how] = {"params": n, "tokens": d} if problem is None else {"error": problem}
            if problem is not None:
                ctx.note(f"{how[:-1]} {how[-1]} at fit_budget: {problem}")
        out["optimum"] = optimum
    (ctx.out_dir / FIT).write_text(json.dumps(out, indent=1, sort_keys=True, default=float))
    fit.plot([(p["budget"] or p["flops"], p["non_embedding_params"], p["tokens"], p["loss"]) for p in points],
             fit3, fit2, ctx.out_dir / "scaling.png")  # fmt: skip
    ctx.metrics["points"] = len(points)
    lines = [
        "| stage | N (non-embedding) | D (tokens) | FLOPs | val loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {p['stage']} | {p['non_embedding_params']:,} | {p['tokens']:.3g} | {p['flops']:.3g} | {p['loss']:.4f} |"
        for p in sorted(points, key=lambda p: (p["flops"], p["non_embedding_params"]))
    ]
    lines += [
        f"| {p['stage']} | {p['non_embedding_params']:,} | {p['tokens']:.3g} | {p['flops']:.3g} | {p['loss']:.4g} (left out) |"
        for p in excluded
    ]
    lines += ["", *fit_lines(out)]
    for how, found in (out.get("optimum") or {}).items():
        if how == "budget":
            continue
        at = f"compute-optimal at {out['optimum']['budget']:.3g} FLOPs ({how[:-1]} {how[-1]})"
        lines.append(
            f"{at}: {found['error']}"
            if "error" in found
            else f"{at}: N = {found['params']:.3g} parameters (non-embedding), "
            f"D = {found['tokens']:.3g} tokens"
        )
    (ctx.out_dir / "results.md").write_text("\n".join(lines) + "\n")
