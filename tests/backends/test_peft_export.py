"""``peft`` exports of LoRA stages (GPT-2 Conv1D and llama with grouped-query attention and
SwiGLU), loaded with PEFT over their ``base/`` hf export and matched against the megatron
model with adapters; hf, onnx and gguf exports and ``generate`` of a stage that holds only
adapters."""

from __future__ import annotations

import json

import pytest
import torch

from tests.backends.conftest import Built, builds_by_style
from tests.backends.posttrain_spec import posttrain_spec

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")
# GPT-2 leaves fc2 (mlp.c_proj) out: its attn.c_proj must not catch it.
TARGETS = {"gpt2": '["qkv", "proj", "fc1"]', "llama": '["qkv", "proj", "fc1", "fc2"]'}
STAGES = """
[[stage]]
name = "sft"
kind = "sft"
from = "pretrain"
data = "chat"
steps = 4
global_batch = 8
lr = 2e-3
eval_batches = 1
[[stage]]
name = "lora"
kind = "lora"
from = "sft"
data = "chat"
steps = 4
global_batch = 8
lr = 1e-2
eval_batches = 1
adapter = {{ rank = 4, alpha = 8.0, targets = {targets} }}
"""
EXPORTS = """
[[export]]
format = "peft"
stage = "lora"
[[export]]
format = "hf"
stage = "lora"
[[export]]
format = "onnx"
stage = "lora"
[[export]]
format = "gguf"
stage = "lora"
quantization = "f32"
"""
SPECIAL = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}


def _arch(style: str):
    from llmbuild.spec.model import Architecture

    kv = 2 if style == "llama" else 4
    return Architecture.model_validate(
        dict(style=style, layers=2, hidden=64, heads=4, kv_heads=kv, ffn_hidden=128, seq_len=32)
    )


def _canonical(arch, vocab: int, gen) -> dict[str, torch.Tensor]:
    """Random megatron-canonical weights of ``arch``."""
    h, d, f = arch.hidden, arch.head_size, arch.ffn_hidden
    gated = arch.activation == "swiglu"
    shapes = {
        "embedding.word_embeddings.weight": (vocab, h),
        "decoder.final_layernorm.weight": (h,),
    }
    if arch.style == "gpt2":
        shapes["embedding.position_embeddings.weight"] = (arch.seq_len, h)
        shapes["decoder.final_layernorm.bias"] = (h,)
    if not arch.tie_embeddings:
        shapes["output_layer.weight"] = (vocab, h)
    for i in range(arch.layers):
        p = f"decoder.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "pre_mlp_layernorm.weight": (h,),
            p + "self_attention.linear_qkv.weight": ((arch.heads + 2 * arch.kv_heads) * d, h),
            p + "self_attention.linear_proj.weight": (h, arch.heads * d),
            p + "mlp.linear_fc1.weight": ((2 if gated else 1) * f, h),
            p + "mlp.linear_fc2.weight": (h, f),
        }
        if arch.norm == "layernorm":
            shapes |= {p + "input_layernorm.bias": (h,), p + "pre_mlp_layernorm.bias": (h,)}
    return {k: 0.1 * torch.randn(s, generator=gen) for k, s in shapes.items()}


def _adapters(base, targets, rank: int, gen) -> dict[str, torch.Tensor]:
    from llmbuild.backends.megatron.lora import LAYERS

    out = {}
    for name, w in base.items():
        layer = name.removesuffix(".weight")
        if any(layer.endswith(LAYERS[t][0]) for t in targets):
            out[f"{layer}.lora_A"] = torch.randn(rank, w.shape[1], generator=gen)
            out[f"{layer}.lora_B"] = 0.1 * torch.randn(w.shape[0], rank, generator=gen)
    return out


def _hf(arch, state, vocab: int):
    from llmbuild.backends.families import family_of
    from transformers import AutoModelForCausalLM

    family = family_of(arch)
    model = AutoModelForCausalLM.from_config(family.hf_config(arch, vocab, SPECIAL))
    model.load_state_dict(family.to_hf(state, arch, vocab), strict=False)
    model.tie_weights()
    return model.eval()


@pytest.mark.parametrize(
    "style, targets",
    [("gpt2", ("qkv", "proj", "fc1", "fc2")), ("gpt2", ("qkv", "proj")), ("llama", ("qkv", "fc1"))],
)
def test_converted_adapters_act_like_the_merged_weights(tmp_path, style, targets):
    """Without training: PEFT over the converted base gives the merged model's logits."""
    from llmbuild.backends.export.convert import peft_adapters
    from llmbuild.backends.export.peft_export import BASE_DIR, load_peft, lora_config
    from llmbuild.backends.megatron.lora import merge
    from safetensors.torch import save_file

    arch, vocab, rank, alpha = _arch(style), 40, 3, 6.0
    gen = torch.Generator().manual_seed(0)
    base = _canonical(arch, vocab, gen)
    adapters = _adapters(base, targets, rank, gen)
    _hf(arch, base, vocab).save_pretrained(str(tmp_path / BASE_DIR))
    from llmbuild.backends.families import family_of

    state, modules = peft_adapters(adapters, arch, family_of(arch))
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    adapter = {"rank": rank, "alpha": alpha, "dropout": 0.0}
    lora_config(adapter, modules, style).save_pretrained(str(tmp_path))
    model = load_peft(tmp_path)
    merged = _hf(arch, merge(base, adapters, alpha / rank), vocab)
    ids = torch.randint(0, vocab, (2, 16), generator=gen)
    with torch.no_grad():
        theirs, ours = model(ids).logits, merged(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert (theirs - ours).abs().max() < 1e-4
    assert (theirs - plain).abs().max() > 1e-2  # the adapters do something
    wrapped = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    per_layer = len(state) // 2 // arch.layers
    assert len(wrapped) == per_layer * arch.layers
    if style == "gpt2" and "fc2" not in targets:
        assert not any(n.endswith("mlp.c_proj") for n in wrapped)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    def write(root, style):
        stages = STAGES.format(targets=TARGETS[style])
        return posttrain_spec(root, stages, EXPORTS, preset=f"{style}-tiny")

    return builds_by_style(tmp_path_factory, write)


@pytest.fixture(params=["gpt2", "llama"])
def built(request, build) -> Built:
    return build(request.param)


def _megatron_logits(built: Built, ids) -> torch.Tensor:
    from llmbuild.backends.export.run import megatron_logits

    return megatron_logits(built.dir("stage:lora"), ids, built.dir("stage:sft"))


def test_peft_export_loads_with_peft_and_matches_the_adapted_model(built):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert not (built.dir("stage:lora") / "model.safetensors").exists()  # adapters only
    out = built.dir("export:peft@lora")
    metrics = built.metrics("export:peft@lora")
    assert metrics["max_logit_diff"] < 1e-4 and metrics["base_max_logit_diff"] < 1e-4
    assert metrics["adapter_effect"] > 1e-3

    base = AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (3, 32), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    ours = _megatron_logits(built, ids)
    assert (theirs - ours).abs().max() < 1e-4
    assert (plain - ours).abs().max() > 1e-3  # without its adapters it is another model

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (
        4,
        8.0,
        "base",
    )
    # sorted, not in the hash order of PEFT's set: the same bytes in every process
    assert config["target_modules"] == sorted(config["target_modules"])
    if built.style == "gpt2":
        assert config["target_modules"] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc"]
        assert config["fan_in_fan_out"] is True
    else:
        assert {m.split(".")[-1] for m in config["target_modules"]} == {
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
        }  # fmt: skip

    state = load_file(str(out / "adapter_model.safetensors"))
    for name, value in state.items():
        assert name.startswith("base_model.model.") and name.endswith(
            (".lora_A.weight", ".lora_B.weight")
        )
        assert value.shape[0 if "lora_A" in name else 1] == 4
    prefix = "base_model.model." + (
        "model.layers.1." if built.style == "llama" else "transformer.h.1."
    )
    if built.style == "llama":  # grouped-query attention: k and v have kv_heads x head_dim rows
        assert state[prefix + "self_attn.k_proj.lora_B.weight"].shape == (32, 4)
        assert state[prefix + "mlp.gate_proj.lora_B.weight"].shape == (128, 4)
    else:
        assert state[prefix + "attn.c_attn.lora_B.weight"].shape == (192, 4)
    adapter_bytes = (out / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 0.2 * (out / "base" / "model.safetensors").stat().st_size
    assert AutoTokenizer.from_pretrained(str(out / "base")).decode([5]) != ""


def test_hf_export_of_an_adapter_only_stage_is_the_merged_model(built):
    from llmbuild.backends.export.peft_export import load_peft
    from transformers import AutoModelForCausalLM

    assert built.metrics("export:hf@lora")["max_logit_diff"] < 1e-4
    hf = AutoModelForCausalLM.from_pretrained(str(built.dir("export:hf@lora"))).eval()
    merged = load_peft(built.dir("export:peft@lora")).merge_and_unload()
    ids = torch.randint(
        0, hf.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        logits = hf(ids).logits
        assert (logits - merged(ids).logits).abs().max() < 1e-4
    assert (logits - _megatron_logits(built, ids)).abs().max() < 1e-4


def test_onnx_and_gguf_exports_of_an_adapter_only_stage(built):
    """Both are checked in their node against the megatron model with the adapters."""
    assert built.metrics("export:onnx@lora")["max_logit_diff"] < 1e-3
    gguf = built.metrics("export:gguf@lora")
    assert gguf["max_logit_diff"] < 1e-3 and gguf["top1_agreement"] == 1.0


def test_generate_from_an_adapter_only_stage(build, capsys):
    from llmbuild.cli import main

    built = build("llama")
    base = ["generate", str(built.spec), "--store", str(built.store), "--prompt", "12+3="]
    greedy = [*base, "--max-new-tokens", "10", "--temperature", "0"]
    assert main([*greedy, "--stage", "lora"]) == 0
    from_stage = capsys.readouterr().out
    assert main([*greedy, "--export", "hf@lora"]) == 0
    assert capsys.readouterr().out == from_stage  # the adapters applied over the base
    assert main([*greedy, "--stage", "sft"]) == 0
    assert capsys.readouterr().out.startswith("12+3=")


def test_an_exported_adapter_loads_from_anywhere_offline(built, tmp_path, monkeypatch):
    """``llmbuild export`` copies the adapter out with its base path made absolute, so
    AutoPeftModelForCausalLM loads it from another directory, with no Hub access."""
    from peft import AutoPeftModelForCausalLM

    from llmbuild.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "shipped"
    args = ["export", str(built.spec), "--store", str(built.store), "--to", str(out), "peft@lora"]
    assert main(args) == 0
    assert main(args) == 2  # it will not overwrite what is there without --force
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = AutoPeftModelForCausalLM.from_pretrained(str(out / "peft@lora"), dtype=torch.float32)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = model.eval()(ids).logits
    assert (theirs - _megatron_logits(built, ids)).abs().max() < 1e-4
