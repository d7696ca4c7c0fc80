"""The eval kinds: perplexity, lm-eval tasks, samples and classification, each run by the ``eval`` backend
on one stage at a time. Registered through the ``llmbuild.kinds`` entry point."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.eval.config import EvalConfig
from llmbuild.backends.eval.spec import SUITES

from llmbuild.kinds import Kind, NodeRefs


class EvalKind(Kind):
    def __init__(self, model: Any) -> None:
        super().__init__(model, "eval")

    def config(self, item: Any, spec: Any, refs: NodeRefs) -> EvalConfig:
        return EvalConfig(suite=item, stage=refs.target)

    def labels(self, item: Any) -> dict[str, str]:
        return {"suite": f"eval.{item.name}"}


KINDS = tuple(EvalKind(model) for model in SUITES)
