"""The spec models of the scaling kinds: the ``sweep`` stage kind (a grid of pretraining
runs declared once, expanded before validation) and the ``scaling`` eval kind (the
scaling-law fit over the sweep's points). Torch-free."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from llmbuild.spec.base import Name, StrList, ref
from llmbuild.spec.tables import EvalTable, StageTable

Value = int | float


class Sweep(StageTable):
    """A grid of pretraining runs, declared once: one stage per point, each a copy of the
    `base` stage with the point's architecture and steps, all sharing the spec's data,
    tokenizer and tokenize nodes; and a `scaling` eval fitting them. Each point runs the
    base stage's schedule over its own steps (a warmup longer than a point's steps becomes
    a tenth of them). The sweep itself makes no node: `plan` shows the points, `resolve`
    each point's values. Adding a point rebuilds that point and the fit alone."""

    kind: Literal["sweep"]
    """Stage kind."""
    base: Name
    """A `pretrain` stage (from scratch) that every point copies."""
    axes: dict[str, Annotated[tuple[Value, ...], Field(min_length=1)]] = Field(min_length=1)
    """Values of each varied field, e.g. `{ hidden = [64, 96, 128], layers = [2, 4] }`:
    fields of `[architecture]`, and the stage's `steps` (or, with `budgets`, none: the
    steps follow from the budget). Every combination is a point."""
    budgets: tuple[Annotated[float, Field(gt=0, allow_inf_nan=False)], ...] = ()
    """isoFLOP form: training compute budgets in FLOPs; each architecture trains at each
    budget, its steps set so that FLOPs per token x tokens = the budget."""
    fit_budget: float | None = Field(None, gt=0)
    """A compute budget (FLOPs) to report the compute-optimal N and D for."""
    bootstrap: int = Field(100, ge=0)
    """Refits on resampled points for the fitted parameters' intervals."""

    @field_validator("axes", mode="before")
    @classmethod
    def _numbers(cls, axes: Any) -> Any:
        for name, values in axes.items() if isinstance(axes, dict) else ():
            for value in values if isinstance(values, (list, tuple)) else ():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(
                        f"axis {name!r} lists {value!r}: a sweep varies numbers (sizes and steps)"
                    )
        return axes

    @field_validator("axes")
    @classmethod
    def _distinct_values(cls, axes: dict[str, tuple[Value, ...]]) -> dict[str, tuple[Value, ...]]:
        for name, values in axes.items():
            twice = _twice(values)
            if twice is not None:
                raise ValueError(f"axis {name!r} lists {twice:g} twice: each point is built once")
        return axes

    @field_validator("budgets")
    @classmethod
    def _distinct_budgets(cls, budgets: tuple[float, ...]) -> tuple[float, ...]:
        twice = _twice(budgets)
        if twice is not None:
            raise ValueError(f"the budget {twice:g} is listed twice: each point is built once")
        return budgets


def _twice(values: tuple[Value, ...]) -> Value | None:
    """The first value listed twice, if any."""
    seen: set[float] = set()
    for v in values:
        if float(v) in seen:
            return v
        seen.add(float(v))
    return None


class Scaling(EvalTable):
    """Scaling laws fitted to a sweep's points: Chinchilla's approach 3 (a parametric
    L(N, D) fitted with a Huber loss on log L by L-BFGS from a grid of starts, with
    bootstrap intervals) and, for isoFLOP sweeps, approach 2 (a parabola per budget and
    power laws through their minima); a plot of loss against compute. One node reads
    every point."""

    kind: Literal["scaling"]
    """Eval kind."""
    stages: StrList = ref("stage", slot="point:{name}", min_length=1)
    """The sweep's points (one node reads all of them)."""
    tokens: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    """Training tokens of each point, one entry per stage (a sweep writes them: steps x
    global_batch x seq_len)."""
    budgets: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    """isoFLOP budget of each point, when the sweep has budgets (then one per stage)."""
    fit_budget: float | None = None
    """A compute budget (FLOPs) to report the compute-optimal N and D for."""
    bootstrap: int = Field(100, ge=0)
    """Refits on resampled points for the parameters' intervals."""
