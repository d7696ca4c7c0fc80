"""GRPO rewards: built-ins (exact match against the prompt record's ``answer``, with or
without partial credit, a regular expression, a length penalty), a trained reward
model's score, and a user function ``module:function(prompt, completion, record) ->
float`` (it runs user code)."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from typing import Any

from llmbuild.backends.megatron.reward_functions import import_module_file


def _user_function(path: str, module_file: str | None) -> Callable[..., float]:
    module, _, name = path.partition(":")
    try:
        fn = getattr(import_module_file(module, module_file), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward function {path!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward function {path!r} is not callable")
    return fn


def _exact_match(completion: str, answer: str) -> float:
    return float(completion == answer)


def _partial_match(completion: str, answer: str) -> float:
    """The share of characters equal at their positions, over the longer of the two."""
    if completion == answer:
        return 1.0
    same = sum(a == b for a, b in zip(completion, answer))
    return same / max(len(completion), len(answer), 1)


class Rewards:
    """The weighted sum of the stage's rewards for each (prompt, completion, record)."""

    def __init__(self, specs: list[dict[str, Any]], models: dict[int, Any]) -> None:
        self.terms: list[tuple[float, Callable[..., list[float]]]] = []
        for i, spec in enumerate(specs):
            self.terms.append((spec["weight"], self._term(spec, models.get(i))))

    @staticmethod
    def _term(spec: dict[str, Any], model: Any) -> Callable[..., list[float]]:
        kind = spec["kind"]
        if kind == "exact_match":
            score = _partial_match if spec.get("partial") else _exact_match
            return lambda prompts, outs, recs, ids: [
                score(o.strip(), str(r.get("answer", "")).strip()) for o, r in zip(outs, recs)
            ]
        if kind == "regex":
            pattern = re.compile(spec["pattern"])
            return lambda prompts, outs, recs, ids: [
                float(pattern.search(o) is not None) for o in outs
            ]
        if kind == "length":
            target = spec["target"]
            return lambda prompts, outs, recs, ids: [float(abs(len(c) - target)) for _, c in ids]
        if kind == "model":
            return lambda prompts, outs, recs, ids: model([p + c for p, c in ids])
        fn = _user_function(spec["function"], spec.get("module_file"))

        def user(prompts: list[str], outs: list[str], recs: list[dict], ids: Any) -> list[float]:
            values = []
            for p, o, r in zip(prompts, outs, recs):
                try:
                    value = fn(p, o, r)
                except Exception as e:
                    raise ValueError(f"reward function {spec['function']!r} failed: {e}") from e
                # A number (an int, a float, numpy's or a one-element tensor's item), not a
                # string or a bool that float() would also take.
                if not isinstance(value, numbers.Real) and callable(getattr(value, "item", None)):
                    try:
                        value = value.item()
                    except (ValueError, RuntimeError):  # more than one element
                        pass
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise ValueError(
                        f"reward function {spec['function']!r} returned {shown} "
                        f"({type(value).__name__}) for the completion {o[:60]!r} of the prompt "
                        f"{p[:60]!r}: a reward must be a number"
                    )
                try:
                    value = float(value)
                except OverflowError:  # an int past float's range
                    value = math.inf
                if not math.isfinite(value):  # it would surface as a diverged loss
                    raise ValueError(
                        f"reward function {spec['function']!r} returned {shown} for the "
                        f"completion {o[:60]!r} of the prompt {p[:60]!r}: a reward must be a "
                        "finite number"
                    )
                values.append(value)
            return values

        return user

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        records: list[dict[str, Any]],
        sequences: list[tuple[list[int], list[int]]],
    ) -> list[float]:
        """``sequences``: (prompt ids, completion ids) of each completion."""
        total = [0.0] * len(completions)
        for weight, term in self.terms:
            for k, v in enumerate(term(prompts, completions, records, sequences)):
                total[k] += weight * v
        return total
