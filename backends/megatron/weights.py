"""A stage artifact's weights in canonical form, from its directory (and its base's):
``model.safetensors``, or for a stage that holds only LoRA adapters, its base's weights
with the adapters merged in. Nodes open stages with ``artifact.StageArtifact``; training
ranks, which get directories, load them here, each reading only the slices it holds
(``rank_weights``)."""

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


class Stored:
    """One tensor of a safetensors file, read when a rank places it, and only as much of it
    as that rank holds (``part``)."""

    __slots__ = ("file", "name")

    def __init__(self, file: Any, name: str) -> None:
        self.file, self.name = file, name

    def full(self) -> torch.Tensor:
        return self.file.get_tensor(self.name)

    def part(self, dim: int, parts: int, index: int) -> torch.Tensor:
        """Slice ``index`` of ``parts`` equal slices along ``dim``, as ``chunk`` cuts it."""
        lazy = self.file.get_slice(self.name)
        size = lazy.get_shape()[dim] // parts
        where = [slice(None)] * len(lazy.get_shape())
        where[dim] = slice(index * size, (index + 1) * size)
        return lazy[tuple(where)]


def rank_weights(stage_dir: Path, base_dir: Path | None = None) -> dict[str, Any]:
    """A stage's canonical weights for a training rank: each a ``Stored`` tensor, read when
    ``shards.load_canonical`` places it, so that a rank reads its own slices of the file
    and nothing else. A stage holding only adapters is merged whole (``load_stage``)."""
    from safetensors import safe_open

    path = Path(stage_dir) / "model.safetensors"
    if adapter_only(Path(stage_dir)):
        return load_stage(stage_dir, base_dir)
    file = safe_open(str(path), framework="pt")
    return {name: Stored(file, name) for name in file.keys()}  # noqa: SIM118 (not a dict)


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
