"""The eval kinds: perplexity, lm-eval tasks, samples and classification, each run by the ``eval`` backend
on one stage at a time. Registered through the ``llmbuild.kinds`` entry point."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.eval.config import EvalConfig
from llmbuild.backends.eval.spec import SUITES

from llmbuild.errors import Path, Problem
from llmbuild.kinds import Kind, NodeRefs, SpecView


class EvalKind(Kind):
    def __init__(self, model: Any) -> None:
        super().__init__(model, "eval")

    def config(self, item: Any, spec: Any, refs: NodeRefs) -> EvalConfig:
        return EvalConfig(suite=item, stage=refs.target)

    def labels(self, item: Any) -> dict[str, str]:
        return {"suite": f"eval.{item.name}"}

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        from llmbuild.backends.megatron.kinds import SCORING, is_encoder

        if item.kind == "classification":
            return []
        out = []
        data = view.raw.get("data") if isinstance(view.raw, dict) else None
        split = data.get("split") if isinstance(data, dict) else None  # else field checks say
        held_out = split.get("validation") if isinstance(split, dict) else None
        if item.kind == "perplexity" and not item.files and held_out == 0:
            out.append(
                Problem(
                    "nothing to measure: [data.split] validation = 0 holds out no document "
                    "of the sources; set it above 0, or list text files in `files`",
                    (*where, "files"),
                )
            )
        for i, name in enumerate(item.stages):
            kind = getattr(view.stages.get(name), "kind", None)
            if is_encoder(view, name):
                out.append(
                    Problem(
                        f"{name!r} is a bert-style encoder: a {item.kind} eval measures a model "
                        "that predicts the next token (an encoder's classifier has "
                        "classification evals)",
                        (*where, "stages", i),
                    )
                )
            elif kind in SCORING:
                out.append(
                    Problem(
                        f"{name!r} is a {SCORING[kind]}: it scores texts, and its language-"
                        f"model head is its base's, untrained since; a {item.kind} eval "
                        f"measures the stage it was trained from, or a classifier's "
                        "classification eval",
                        (*where, "stages", i),
                    )
                )
        return out


KINDS = tuple(EvalKind(model) for model in SUITES)
