"""GPT-2's tensors <-> ours. Its Conv1D layers store linears transposed; its q/k/v are
one ``[Q; K; V]`` matrix; it always has biases (zeros when our model has none)."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.families.mapping import (
    FusedQkv,
    Rule,
    Same,
    Shapes,
    Transposed,
    VocabRows,
)

L, H = "decoder.layers.{i}.", "transformer.h.{i}."


class ZeroBias(Rule):
    """A bias GPT-2 has and a bias-free model of ours lacks: zeros there, none here."""

    def __init__(self, theirs: str, size: int, what: str = "biases") -> None:
        self.ours, self.theirs, self.size, self.what = (), (theirs,), size, what

    def to_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        import torch

        return [torch.zeros(self.size)]

    def from_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        if tensors[0].abs().max() > 0:
            raise ValueError(f"{self.theirs[0]} is not zero, but the model has no {self.what}")
        return []


def _bias(ours: str, theirs: str, size: int, arch: Any, qkv: bool = False) -> Rule:
    if not arch.bias:
        return ZeroBias(theirs, size)
    return FusedQkv(ours, theirs, conv1d=False) if qkv else Same(ours, theirs)


def _norm_bias(ours: str, theirs: str, size: int, arch: Any) -> Rule:
    return Same(ours, theirs) if arch.norm_bias else ZeroBias(theirs, size, "LayerNorm biases")


def rules(arch: Any) -> list[Rule]:
    h, f = arch.hidden, arch.ffn_hidden
    out: list[Rule] = [
        VocabRows("embedding.word_embeddings.weight", "transformer.wte.weight"),
        Same("embedding.position_embeddings.weight", "transformer.wpe.weight"),
        Same("decoder.final_layernorm.weight", "transformer.ln_f.weight"),
        _norm_bias("decoder.final_layernorm.bias", "transformer.ln_f.bias", h, arch),
        Same(L + "input_layernorm.weight", H + "ln_1.weight"),
        _norm_bias(L + "input_layernorm.bias", H + "ln_1.bias", h, arch),
        Same(L + "pre_mlp_layernorm.weight", H + "ln_2.weight"),
        _norm_bias(L + "pre_mlp_layernorm.bias", H + "ln_2.bias", h, arch),
        FusedQkv(L + "self_attention.linear_qkv.weight", H + "attn.c_attn.weight", conv1d=True),
        _bias(L + "self_attention.linear_qkv.bias", H + "attn.c_attn.bias", 3 * h, arch, True),
        Transposed(L + "self_attention.linear_proj.weight", H + "attn.c_proj.weight"),
        _bias(L + "self_attention.linear_proj.bias", H + "attn.c_proj.bias", h, arch),
        Transposed(L + "mlp.linear_fc1.weight", H + "mlp.c_fc.weight"),
        _bias(L + "mlp.linear_fc1.bias", H + "mlp.c_fc.bias", f, arch),
        Transposed(L + "mlp.linear_fc2.weight", H + "mlp.c_proj.weight"),
        _bias(L + "mlp.linear_fc2.bias", H + "mlp.c_proj.bias", h, arch),
    ]
    if not arch.tie_embeddings:
        out.append(VocabRows("output_layer.weight", "lm_head.weight"))
    return out


ADAPTER_MODULES = {
    "qkv": ("attn.c_attn",),
    "proj": ("attn.c_proj",),
    "fc1": ("mlp.c_fc",),
    "fc2": ("mlp.c_proj",),
}
IGNORED = (r"\.attn\.(masked_)?bias$",)
"""Older writers save GPT-2's causal mask buffers with the weights."""
