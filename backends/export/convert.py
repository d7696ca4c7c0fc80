"""LoRA adapters of our layers -> PEFT's layout for a family's Hugging Face modules (the
weights themselves convert through the family's rules, ``llmbuild.backends.families``)."""

from __future__ import annotations

import re
from typing import Any

import torch
from llmbuild.backends.families.mapping import Shapes, split_qkv

_ADAPTER = re.compile(r"decoder\.layers\.(\d+)\.(.+)\.lora_([AB])")


def _adapter_rows(kind: str, b: torch.Tensor, modules: tuple[str, ...], s: Shapes) -> tuple:
    """``lora_B`` rows of one megatron layer, split and ordered like the HF modules'
    output rows (the adapter's ``A`` acts on the same input, so it is shared)."""
    if kind == "qkv":
        q, k, v = split_qkv(b, s)
        return (torch.cat([q, k, v]),) if len(modules) == 1 else (q, k, v)
    if kind == "fc1" and len(modules) == 2:
        return tuple(b.chunk(2, dim=0))  # SwiGLU's [gate; up]
    return (b,)


def peft_adapters(
    adapters: dict[str, torch.Tensor], arch: Any, family: Any
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Canonical megatron adapters (``<layer>.lora_A`` ``[r, in]``, ``.lora_B`` ``[out, r]``)
    -> PEFT's state dict (``base_model.model.<module>.lora_A.weight`` ...) and its
    ``target_modules``. GPT-2's Conv1D modules keep ``[r, in]``/``[out, r]`` adapters too:
    PEFT applies them as linears on the input and transposes only when merging."""
    from llmbuild.backends.megatron.lora import LAYERS

    kinds = {suffix: kind for kind, (suffix, _) in LAYERS.items()}
    shapes = Shapes.of(arch, 0, 0)
    out: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for name, a in adapters.items():
        match = _ADAPTER.fullmatch(name)
        if match is None or match.group(2) not in kinds:
            raise ValueError(f"not a LoRA adapter of a known layer: {name!r}")
        if match.group(3) == "B":
            continue
        layer, kind = int(match.group(1)), kinds[match.group(2)]
        b = adapters[name[: -len("lora_A")] + "lora_B"]
        prefix = "base_model.model." + family.layer_prefix.format(layer)
        modules = family.adapter_modules[kind]
        for module, rows in zip(modules, _adapter_rows(kind, b, modules, shapes), strict=True):
            out[f"{prefix}{module}.lora_A.weight"] = a.float().clone(
                memory_format=torch.contiguous_format
            )
            out[f"{prefix}{module}.lora_B.weight"] = rows.float().clone(
                memory_format=torch.contiguous_format
            )
            targets.add(module)
    return out, sorted(targets)
