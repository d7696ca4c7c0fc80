"""Model families: how a Hugging Face architecture maps onto ours, in both directions.

One folder per family, with fixed roles: ``config.py`` (its ``config.json`` <-> our
architecture table, torch-free: the planner reads checkpoints with it), ``weights.py``
(the tensor rules of ``mapping.py``: import and export use the same ones) and ``gguf.py``
(its llama.cpp names and metadata). Tensor- and pipeline-parallel sharding is megatron's
own, from each parameter's partition marks on our canonical names (``megatron/shards.py``
and ``megatron/pipeline.py``): a family maps names and layouts, never ranks.

Import, export, eval and generate take a family object; none of them knows a layout.
"""

from __future__ import annotations

import importlib
from typing import Any

from llmbuild.errors import UserError

NAMES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "bert")


class Unsupported(UserError):
    """A checkpoint whose architecture, or one of its settings, no family maps."""


def family(name: str) -> Any:
    """The family object of a family name (``gpt2``, ``llama``, ...)."""
    if name not in NAMES:
        raise Unsupported(f"no model family {name!r} (families: {', '.join(NAMES)})")
    return importlib.import_module(f"llmbuild.backends.families.{name}").FAMILY


def family_of(arch: Any) -> Any:
    """The family an architecture exports as (its ``family``, else its style's)."""
    return family(arch.model_family)


def family_of_config(config: dict[str, Any], where: str = "config.json") -> Any:
    """The family of a Hugging Face ``config.json`` (by ``model_type``)."""
    model_type = config.get("model_type")
    for name in NAMES:
        found = family(name)
        if model_type == found.model_type:
            _require_language_model(config, found, where)
            return found
    arches = ", ".join(config.get("architectures") or []) or "none"
    supported = ", ".join(f"{family(n).hf_class} ({family(n).model_type})" for n in NAMES)
    if model_type is None:  # transformers reads the family from it too
        raise Unsupported(
            f"{where}: no model_type (architectures: {arches}); a Hugging Face config names "
            f"its family there; supported: {supported}"
        )
    raise Unsupported(
        f"{where}: model_type {model_type!r} (architectures: {arches}) is not supported; "
        f"supported: {supported}"
    )


TASK_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
)
"""Heads fine-tuned for a task: a checkpoint of one has no language-model head to prove
its import by, and its head no place in this family's model."""


def _require_language_model(config: dict[str, Any], found: Any, where: str) -> None:
    arches = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    task = next((a for a in arches if a.endswith(TASK_HEADS)), None)
    if task is None:
        return
    labels = config.get("id2label")
    count = f" of {len(labels)} labels" if isinstance(labels, dict) and len(labels) > 1 else ""
    raise Unsupported(
        f"{where}: a {task} checkpoint (a task head{count}): llmbuild imports the "
        f"language model a task is fine-tuned from ({found.hf_class}); import that one and "
        f"train your task on it ({'a classify stage' if found.style == 'bert' else 'a classify or reward stage'})"
    )
