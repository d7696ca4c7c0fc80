"""``peft`` export: a LoRA stage's adapters as a PEFT adapter directory
(``adapter_config.json``, ``adapter_model.safetensors``) over the hf export of its base,
written to ``base/`` so the directory stands alone::

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out)

Proven by loading exactly that with PEFT and comparing its logits with the megatron model
with the adapters applied."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from llmbuild.backends.export.run import (
    TOLERANCE,
    VerificationError,
    hf_model,
    inputs,
    megatron_logits,
    random_ids,
    save_hf,
    verify_hf,
)

ADAPTER_FILE = "adapter_model.safetensors"
BASE_DIR = "base"
"""The hf export of the base, inside the export directory (``base_model_name_or_path``)."""
SEED = 1
"""Of the random token ids the adapted logits are compared on."""


def lora_config(adapter: dict[str, Any], targets: list[str], family: str) -> Any:
    """PEFT's ``LoraConfig`` of the stage's ``[stage.adapter]`` table (scaling alpha / r)."""
    from peft import LoraConfig

    config = LoraConfig(
        r=adapter["rank"],
        lora_alpha=adapter["alpha"],
        lora_dropout=adapter["dropout"],
        target_modules=targets,
        bias="none",
        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores its weight as [in, out]
        task_type="CAUSAL_LM",
        base_model_name_or_path=BASE_DIR,
    )
    # PEFT holds the targets as a set and writes them in its hash order (PYTHONHASHSEED):
    # a sorted list keeps adapter_config.json the same bytes in every process.
    config.target_modules = sorted(targets)
    return config


def load_peft(out: Path) -> Any:
    """The export as a user loads it: the base with the adapter on top (float32, eval)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(out / BASE_DIR), dtype=torch.float32)
    with warnings.catch_warnings():  # peft reads an attribute transformers deprecates
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        return PeftModel.from_pretrained(base, str(out)).eval()


def check_loaded(model: Any, state: dict[str, Any]) -> None:
    """Every adapter tensor written is the one PEFT holds, and PEFT holds no other (a
    misnamed key would otherwise load as a fresh zero-effect adapter, unnoticed)."""
    from peft import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(model, save_embedding_layers=False)
    if set(loaded) != set(state):
        raise VerificationError(
            f"PEFT loaded other adapter tensors than written: missing "
            f"{sorted(set(state) - set(loaded))[:3]}, unexpected "
            f"{sorted(set(loaded) - set(state))[:3]}"
        )
    for name, value in state.items():
        if not bool((loaded[name].float() == value).all()):
            raise VerificationError(f"PEFT's {name} is not the tensor written")


def adapted_logits(out: Path, stage_dir: Path, base_dir: Path, vocab: int, seq: int) -> dict:
    """The PEFT model's logits against the megatron model's with the adapters, and how far
    the adapters move the base (a check on zero adapters would prove nothing)."""
    import torch

    model = load_peft(out)
    ids = random_ids(vocab, 2, seq, SEED)
    with torch.no_grad():
        theirs = model(ids).logits.float()
        with model.disable_adapter():
            base = model(ids).logits.float()
    ours = megatron_logits(stage_dir, ids, base_dir)
    return {
        "max_logit_diff": float((theirs - ours).abs().max()),
        "adapter_effect": float((theirs - base).abs().max()),
    }


def export_peft(ctx: Any) -> None:
    from llmbuild.backends.export.convert import peft_adapters
    from llmbuild.backends.megatron.artifact import ADAPTER
    from safetensors.torch import save_file

    from llmbuild.errors import UserError

    stage, tokenizer = inputs(ctx)
    adapter = stage.config.get("adapter")
    if adapter is None or not (stage.path / ADAPTER).exists() or stage.parent is None:
        raise UserError(f"{ctx.node}: stage {stage.name!r} holds no LoRA adapters")
    out: Path = ctx.out_dir
    parent = stage.parent
    base = hf_model(parent, tokenizer, ctx.node)
    save_hf(base, out / BASE_DIR, tokenizer, "float32")
    base_diff = verify_hf(base, out / BASE_DIR, parent, "float32", "the base's hf export")
    state, targets = peft_adapters(stage.adapters(), base.arch, base.family)
    save_file(state, str(out / ADAPTER_FILE), metadata={"format": "pt"})
    lora_config(adapter, targets, base.family.name).save_pretrained(str(out))
    stage_dir, base_dir = stage.path, parent.path
    check_loaded(load_peft(out), state)
    logits = adapted_logits(out, stage_dir, base_dir, base.vocab, min(base.arch.seq_len, 32))
    ctx.metrics.update(
        {
            **logits,
            "base_max_logit_diff": base_diff,
            "format": "peft",
            "rank": adapter["rank"],
            "target_modules": targets,
            "adapter_bytes": (out / ADAPTER_FILE).stat().st_size,
        }
    )
    if not logits["max_logit_diff"] <= TOLERANCE["float32"]:  # NaN fails too
        raise VerificationError(
            f"the PEFT model's logits differ from the trained model's by "
            f"{logits['max_logit_diff']:.2e} (tolerance {TOLERANCE['float32']:.0e}): "
            f"the adapter conversion is wrong"
        )
    ctx.log.info(
        "peft export verified: max logit difference %.2e (the adapters move logits by %.2e)",
        logits["max_logit_diff"],
        logits["adapter_effect"],
    )
