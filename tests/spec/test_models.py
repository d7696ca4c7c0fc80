"""The schema itself: documented fields, the pinned key roles, the JSON Schema."""

from __future__ import annotations

import json
import types
from typing import Annotated, Union, get_args, get_origin

from pydantic import BaseModel

from llmbuild.registry import default_registry
from llmbuild.spec.base import key_role
from llmbuild.spec.compose import CONTENT_PATHS, kind_content_fields
from llmbuild.spec.root import spec_model
from llmbuild.spec.schema import spec_schema_text
from tests.conftest import REPO


def _models(tp, seen=None) -> dict[str, type[BaseModel]]:
    seen = {} if seen is None else seen
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp.__name__ in seen:
            return seen
        seen[tp.__name__] = tp
        for f in tp.model_fields.values():
            _models(f.annotation, seen)
    elif get_origin(tp) in (Annotated, Union, types.UnionType, tuple, list, dict):
        for arg in get_args(tp):
            _models(arg, seen)
    return seen


def all_models() -> dict[str, type[BaseModel]]:
    models = _models(spec_model())
    registry = default_registry()
    for name in registry.names():
        _models(registry.get(name).Config, models)
    return models


def test_every_field_has_a_docstring():
    undocumented = [
        f"{m.__name__}.{name}"
        for m in all_models().values()
        for name, f in m.model_fields.items()
        if not f.description
    ]
    assert undocumented == []


def _roles(role: str) -> list[str]:
    return sorted(
        f"{m.__name__}.{name}"
        for m in all_models().values()
        for name in m.model_fields
        if key_role(m, name) == role
    )


def test_execution_only_fields_are_pinned():
    # Changing this list changes which edits rebuild nodes: review it deliberately.
    assert _roles("execution") == sorted(
        [
            "Classification.batch_size",
            "LmEval.batch_size",
            "Parallelism.cpus_per_rank",
            "Parallelism.data",
            "Parallelism.device",
            "Parallelism.distributed_optimizer",
            "Parallelism.micro_batch",
            "Parallelism.pipeline",
            "Parallelism.recompute",
            "Parallelism.sequence_parallel",
            "Parallelism.tensor",
            "Perplexity.batch_size",
            *[
                f"{k}.{f}"
                for k in (
                    "Classify",
                    "Distill",
                    "Dpo",
                    "Grpo",
                    "Lora",
                    "Mlm",
                    "Pretrain",
                    "RewardModel",
                    "Sft",
                )
                for f in ("checkpoint_every", "eval_every", "log_every")
            ],
            "TrainConfig.parallelism",
        ]
    )


FIXED = ("Source", "Tokenizer")


def test_content_paths_match_the_schema():
    content = _roles("content")
    assert content == [
        "Classification.files",
        "FunctionReward.module_file",  # set by its kind (rebase), not written relative
        "Import.checkpoint",
        "LmEval.include_path",
        "Perplexity.files",
        "Source.path",
        "Tokenizer.path",
    ]
    fixed = sorted(p[-1] for p in CONTENT_PATHS)  # the kinds' are found from their models
    assert fixed == sorted(c.split(".")[1] for c in content if c.split(".")[0] in FIXED)
    registry = default_registry()
    assert kind_content_fields(registry, "eval", {"kind": "lm-eval"}) == ["include_path"]
    assert kind_content_fields(registry, "eval", {"kind": "perplexity"}) == ["files"]
    assert kind_content_fields(registry, "stage", {"kind": "import"}) == ["checkpoint"]


def test_committed_json_schema_is_current():
    committed = (REPO / "llmbuild.schema.json").read_text()
    assert committed == spec_schema_text(), "run: llmbuild schema -o llmbuild.schema.json"
    schema = json.loads(committed)
    assert schema["properties"]["stage"]["description"].startswith("Training stages")
    assert "x-key-role" in json.dumps(schema)
