"""The scaling kinds. ``sweep`` is a macro: before validation it becomes one ``pretrain``
stage per point (a copy of its base stage with the point's architecture and steps) and
one ``scaling`` eval over them, and leaves the spec. ``scaling`` is an eval of the
``scaling`` backend that reads every point at once. Registered through the
``llmbuild.kinds`` entry point."""

from __future__ import annotations

import itertools
from typing import Any

from llmbuild.backends.megatron.sizes import non_embedding_params
from llmbuild.backends.scaling.config import ScalingConfig
from llmbuild.backends.scaling.spec import Scaling, Sweep
from pydantic import ValidationError

from llmbuild.errors import Path, Problem
from llmbuild.kinds import Completion, Kind, NodeRefs
from llmbuild.spec.model import Architecture

STAGE_AXES = ("steps",)
MAX_STEPS = 1_000_000_000
"""A training stage's most steps (its `steps` field's bound)."""


def budget_name(budget: float) -> str:
    """``3e13`` for 3e13 FLOPs (a name part: no ``+``)."""
    mantissa, exponent = (
        f"{budget:.3g}".split("e") if "e" in f"{budget:.3g}" else (f"{budget:.3g}", "0")
    )
    return f"{mantissa}e{int(exponent)}"


def point_name(sweep: str, values: dict[str, Any], budget: float | None) -> str:
    parts = [f"c{budget_name(budget)}"] if budget is not None else []
    parts += [f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in values.items()]
    return "-".join([sweep, *parts])


class SweepKind(Kind):
    def __init__(self) -> None:
        super().__init__(Sweep, "scaling")

    def complete(self, raw: dict[str, Any], where: Path, spec: dict[str, Any]) -> Completion:
        from llmbuild.spec.validate import problems_of

        done = Completion(origin=f"sweep {raw.get('name')!r}", replace=True)
        try:
            sweep = Sweep.model_validate(raw)
        except ValidationError as e:
            done.problems = problems_of(e, Sweep, where)
            return done
        stages = [s for s in spec.get("stage", []) if isinstance(s, dict)]
        base = next((s for s in stages if s.get("name") == sweep.base), None)
        if base is None or base.get("kind") != "pretrain" or base.get("from"):
            done.problems.append(
                Problem(f"no pretrain stage from scratch named {sweep.base!r}", (*where, "base"))
            )
            return done
        fields = set(Architecture.model_fields)
        unknown = [k for k in sweep.axes if k not in fields and k not in STAGE_AXES]
        if unknown or (sweep.budgets and "steps" in sweep.axes):
            why = (
                f"unknown axis {unknown[0]!r}: axes are [architecture] fields and steps"
                if unknown
                else "with budgets, the steps follow from each budget: steps is not an axis"
            )
            done.problems.append(Problem(why, (*where, "axes")))
            return done
        for v in sweep.axes.get("steps", ()):
            if not (isinstance(v, int) and 0 < v <= MAX_STEPS):
                done.problems.append(
                    Problem(
                        f"the steps axis lists {v!r}: a stage trains a whole number of steps, "
                        f"from 1 to {MAX_STEPS:.0e}",
                        (*where, "axes", "steps"),
                    )
                )
                return done
        arch_raw = spec.get("architecture") if isinstance(spec.get("architecture"), dict) else {}
        # The base stage's own architecture fields are part of what each point copies.
        own_raw = base.get("architecture") if isinstance(base.get("architecture"), dict) else {}
        arch_raw = {**arch_raw, **own_raw}
        try:
            Architecture.model_validate(arch_raw)
        except ValidationError:
            return done  # [architecture]'s own problems are reported where it is
        names = list(sweep.axes)
        points, tokens, budgets = [], {}, {}
        for combo in itertools.product(*(sweep.axes[k] for k in names)):
            values = dict(zip(names, combo))
            patch = {k: v for k, v in values.items() if k in fields}
            try:
                own = Architecture.model_validate({**arch_raw, **patch})
                params = non_embedding_params(own)
            except ValueError as e:  # pydantic's ValidationError is one, as is a size check's
                why = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
                done.problems.append(
                    Problem(
                        f"the point {values} is not a valid architecture: {why}",
                        (*where, "axes"),
                    )
                )
                continue
            if patch:  # what the new shape derives, written out: the stage trains this
                patch = {**patch, "ffn_hidden": own.ffn_hidden, "kv_heads": own.kv_heads}
            per_step = int(base.get("global_batch", 1)) * own.seq_len
            for budget in sweep.budgets or [None]:
                steps = int(values.get("steps", base.get("steps", 1)))
                if budget is not None:
                    from llmbuild.backends.scaling.fit import flops_per_token

                    step_flops = flops_per_token(params, own.layers, own.hidden, own.seq_len)
                    step_flops *= per_step
                    steps = round(budget / step_flops)
                    if steps > MAX_STEPS:
                        done.problems.append(
                            Problem(
                                f"the budget {budget:.3g} buys {steps:.3g} training steps of the "
                                f"point {values}, more than a stage's {MAX_STEPS:.0e}: lower "
                                "the budget",
                                (*where, "budgets"),
                            )
                        )
                        continue
                    if steps < 1:
                        done.problems.append(
                            Problem(
                                f"the budget {budget:.3g} buys no training step of the point "
                                f"{values} (a step costs {step_flops:.3g} FLOPs): raise the "
                                "budget, or make the point or global_batch smaller",
                                (*where, "budgets"),
                            )
                        )
                        continue
                name = point_name(sweep.name, values, budget)
                stage = {k: v for k, v in base.items() if k != "name"}
                stage.update({"name": name, "steps": steps})
                if patch or own_raw:
                    stage["architecture"] = {**own_raw, **patch}
                warmup = (stage.get("schedule") or {}).get("warmup", 0)
                if isinstance(warmup, int) and warmup > steps:
                    stage["schedule"] = {**stage["schedule"], "warmup": steps // 10}
                points.append(stage)
                tokens[name] = float(steps * per_step)
                if budget is not None:
                    budgets[name] = float(budget)
        taken = {s.get("name") for s in stages if s is not base}
        clash = next((p["name"] for p in points if p["name"] in taken), None)
        if clash is not None:
            done.problems.append(
                Problem(
                    f"the point {clash!r} has the name of another stage: rename that stage "
                    "(a sweep names its points <sweep>-<values>)",
                    (*where, "name"),
                )
            )
        if done.problems:  # the points that are left would only add problems of their own
            return done
        fit = {
            "name": sweep.name,
            "kind": "scaling",
            "stages": [p["name"] for p in points],
            "tokens": tokens,
            "budgets": budgets,
            "bootstrap": sweep.bootstrap,
        }
        if sweep.fit_budget is not None:
            fit["fit_budget"] = sweep.fit_budget
        done.add = {"stage": points, "eval": [fit]}
        return done


class ScalingKind(Kind):
    def __init__(self) -> None:
        super().__init__(Scaling, "scaling")

    def check(self, item: Any, where: Path, view: Any) -> list[Problem]:
        """Each point's tokens (and budget, when budgets are given) are named: a sweep
        writes them, a hand-written fit must."""
        out = []
        for field, values in (("tokens", item.tokens), ("budgets", item.budgets)):
            if field == "budgets" and not values:
                continue
            what = "training tokens" if field == "tokens" else "compute budget"
            missing = [s for s in item.stages if s not in values]
            if missing:
                out.append(
                    Problem(
                        f"no {what} for {', '.join(map(repr, missing))}: each of `stages` "
                        f"needs its own (e.g. {field} = {{ {missing[0]} = 1e6 }}); a sweep "
                        "writes them itself",
                        (*where, field),
                    )
                )
            extra = [s for s in values if s not in item.stages]
            if extra:
                out.append(
                    Problem(
                        f"names {', '.join(map(repr, extra))}, not among `stages`", (*where, field)
                    )
                )
        return out

    def config(self, item: Any, spec: Any, refs: NodeRefs) -> ScalingConfig:
        return ScalingConfig(suite=item)

    def inputs(self, item: Any, spec: Any) -> dict[str, str]:
        return {}

    def labels(self, item: Any) -> dict[str, str]:
        return {"suite": f"eval.{item.name}"}


KINDS = (SweepKind(), ScalingKind())
