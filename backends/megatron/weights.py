"""A stage artifact's weights in canonical form, from its directory (and its base's):
``model.safetensors``, or for a stage that holds only LoRA adapters, its base's weights
with the adapters merged in. Nodes open stages with ``artifact.StageArtifact``; training
ranks, which get directories, load them here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def stage_config(stage_dir: Path) -> dict[str, Any]:
    return json.loads((Path(stage_dir) / "config.json").read_text())


def adapter_only(stage_dir: Path) -> bool:
    return not (Path(stage_dir) / "model.safetensors").exists()


def load_stage(stage_dir: Path, base_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Full canonical weights of a stage (adapters merged when the stage holds only them)."""
    from safetensors.torch import load_file

    stage_dir = Path(stage_dir)
    if not adapter_only(stage_dir):
        return load_file(str(stage_dir / "model.safetensors"))
    from llmbuild.backends.megatron.lora import merge

    config = stage_config(stage_dir)
    if base_dir is None:
        raise ValueError(
            f"stage {config['stage']!r} holds only LoRA adapters and no base weights were given"
        )
    adapter = config["adapter"]
    return merge(
        load_file(str(Path(base_dir) / "model.safetensors")),
        load_file(str(stage_dir / "adapter.safetensors")),
        adapter["alpha"] / adapter["rank"],
    )
