"""The ``export:<format>@<stage>`` node. ``hf``: a transformers model directory (weights,
config, tokenizer with chat template, generation config), proven by loading it with
``AutoModelForCausalLM`` and comparing its logits with the megatron model's."""

from __future__ import annotations

import json
from typing import Any

TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


def _special_ids(tokenizer_dir: Any) -> dict[str, int]:
    from tokenizers import Tokenizer

    info = json.loads((tokenizer_dir / "tokenizer_info.json").read_text())
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer" / "tokenizer.json"))
    return {f"{k}_id": tok.token_to_id(info[k]) for k in ("bos_token", "eos_token", "pad_token")}


def max_logit_difference(stage_dir: Any, hf_dir: Any, seq: int, vocab: int, seed: int = 0) -> float:
    import torch
    from llmbuild.backends.megatron.generate import load_model
    from transformers import AutoModelForCausalLM

    ours, _ = load_model(stage_dir)
    theirs = AutoModelForCausalLM.from_pretrained(str(hf_dir), torch_dtype=torch.float32).eval()
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a = ours(ids, torch.arange(seq).unsqueeze(0).expand(2, -1), None)[..., :vocab].float()
        b = theirs(ids).logits.float()
    return float((a - b).abs().max())


def export_hf(ctx: Any, dtype: str) -> None:
    import torch
    from llmbuild.backends.export.convert import hf_config, to_hf
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from llmbuild.spec.model import Architecture

    stage, tok = ctx.input("model").path, ctx.input("tokenizer").path
    config = json.loads((stage / "config.json").read_text())
    arch = Architecture.model_validate(config["architecture"])
    vocab = config["vocab_size"]
    special = _special_ids(tok)
    state = to_hf(load_file(str(stage / "model.safetensors")), arch, vocab)
    model = AutoModelForCausalLM.from_config(hf_config(arch, vocab, special))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (arch.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"weight conversion mismatch: missing {missing}, unexpected {unexpected}"
        )
    if arch.tie_embeddings:
        model.tie_weights()
    model = model.to(getattr(torch, dtype))
    out = ctx.out_dir
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tok / "tokenizer")).save_pretrained(str(out))
    GenerationConfig(**special, max_length=arch.seq_len).save_pretrained(str(out))
    diff = max_logit_difference(stage, out, min(arch.seq_len, 32), vocab)
    ctx.metrics.update(
        {
            "max_logit_diff": diff,
            "format": "hf",
            "dtype": dtype,
            "architecture": type(model).__name__,
        }
    )
    if diff > TOLERANCE[dtype]:
        raise RuntimeError(
            f"the export's logits differ from the trained model's by {diff:.2e} "
            f"(tolerance {TOLERANCE[dtype]:.0e}): the conversion is wrong"
        )
    ctx.log.info("hf export verified: max logit difference %.2e", diff)


def run(ctx: Any) -> None:
    export = ctx.config.export
    if export.format != "hf":
        raise NotImplementedError(f"{export.format} export is not implemented yet")
    export_hf(ctx, export.dtype)
