"""``gguf`` export: the transformers weights renamed, re-laid and typed the way llama.cpp's
``convert_hf_to_gguf.py`` writes them (arch ``llama`` or ``gpt2``), with architecture and
tokenizer metadata, then read back with ``gguf.GGUFReader`` and checked tensor by tensor
(names, shapes, types, dequantized values) and key by key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild.backends.export.gguf_vocab import gguf_vocab, write_vocab
from llmbuild.backends.export.heldout import heldout_perplexity
from llmbuild.backends.export.run import (
    HfModel,
    VerificationError,
    hf_model,
    inputs,
    megatron_logits,
    random_ids,
)

FILE = "model.gguf"
VALUE_TOLERANCE = {"F32": 0.0, "F16": 1e-3, "Q8_0": 1e-2, "Q5_1": 0.035, "Q4_0": 0.13}
"""Largest dequantized error per tensor, relative to the tensor's largest magnitude: half
a step of 1/127 (q8_0) and of 1/31 of a block's range (q5_1); q4_0 scales a block by its
largest value over -8, so the far end of the other sign is clipped by a whole step, 1/8."""
F32_LOGIT_TOLERANCE = 1e-3
"""Largest logit difference of an f32 file, as transformers reads it, from the megatron
model's; other files are held to ``MIN_TOP1_AGREEMENT`` instead."""
MIN_TOP1_AGREEMENT = {"f32": 0.9, "f16": 0.9, "q8_0": 0.9, "q5_1": 0.8, "q4_0": 0.6}
"""Share of positions where the file's top-1 token must be the trained model's; the
held-out perplexity beside the unquantized model's says how much the lower bits cost."""
QUANTIZED = ("q8_0", "q5_1", "q4_0")
SPECIAL_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
}


@dataclass(frozen=True)
class Tensor:
    """One tensor to write: float32 values in GGUF layout and the type to store them as."""

    values: Any
    qtype: Any


def permute_qk(w: Any, heads: int, kv_heads: int | None = None) -> Any:
    """HF's rotate-half q/k rows -> the interleaved pairs llama.cpp's rope expects (what
    ``convert_hf_to_gguf.py``'s ``LlamaModel.permute`` does)."""
    if kv_heads is not None and kv_heads != heads:
        heads = kv_heads
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _gguf_arch(family: Any) -> Any:
    import gguf

    return getattr(gguf.MODEL_ARCH, family.gguf.arch)


def arch_name(family: Any) -> str:
    """``general.architecture``: ``llama``, ``gpt2``, ``qwen2``..., by the family."""
    import gguf

    return gguf.MODEL_ARCH_NAMES[_gguf_arch(family)]


def tensor_type(name: str, shape: tuple[int, ...], quantization: str) -> Any:
    """As llama.cpp's converter chooses: vectors and position embeddings stay F32; rows that
    do not fill whole quantization blocks fall back to F16."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as T

    if len(shape) == 1 or quantization == "f32" or name == "position_embd.weight":
        return T.F32
    if quantization in QUANTIZED:
        qtype = T[quantization.upper()]
        if shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0:
            return qtype
    return T.F16


def gguf_tensors(
    state: dict[str, Any], arch: Any, family: Any, quantization: str
) -> dict[str, Tensor]:
    """Transformers weights (float32 numpy, HF names) -> GGUF names, layouts and types."""
    import gguf

    names = gguf.get_tensor_name_map(_gguf_arch(family), arch.layers)
    form = family.gguf
    out: dict[str, Tensor] = {}
    for hf_name, w in state.items():
        if form.permute_qk and hf_name.endswith("self_attn.q_proj.weight"):
            w = permute_qk(w, arch.heads, arch.heads)
        elif form.permute_qk and hf_name.endswith("self_attn.k_proj.weight"):
            w = permute_qk(w, arch.heads, arch.kv_heads)
        elif hf_name.endswith(form.conv1d):
            w = w.T  # Conv1D stores linears transposed
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise RuntimeError(f"no GGUF name for the weight {hf_name!r}")
        w = w.copy(order="C")
        out[name] = Tensor(w, tensor_type(name, w.shape, quantization))
    if form.tied_output and "output.weight" not in out:
        # llama.cpp's converter writes GPT-2's tied head as its own tensor
        out["output.weight"] = out["token_embd.weight"]
    return out


def arch_metadata(arch: Any, family: Any, vocab: int) -> dict[str, Any]:
    """``{arch}.*`` keys (the values as written, for the read-back check)."""
    a = arch_name(family)
    meta = {
        f"{a}.context_length": arch.positions,
        f"{a}.embedding_length": arch.hidden,
        f"{a}.block_count": arch.layers,
        f"{a}.feed_forward_length": arch.ffn_hidden,
        f"{a}.attention.head_count": arch.heads,
        f"{a}.vocab_size": vocab,
    }
    if arch.style == "llama":
        meta |= {
            f"{a}.attention.head_count_kv": arch.kv_heads,
            f"{a}.attention.layer_norm_rms_epsilon": arch.norm_eps,
            f"{a}.rope.freq_base": arch.rope_base,
            f"{a}.rope.dimension_count": arch.head_size,
        }
        if arch.head_dim is not None:  # heads of their own size (Qwen3)
            meta[f"{a}.attention.key_length"] = arch.head_dim
            meta[f"{a}.attention.value_length"] = arch.head_dim
    else:
        meta[f"{a}.attention.layer_norm_epsilon"] = arch.norm_eps
    return meta


def gguf_writer(path: Path, arch: str) -> Any:
    import gguf

    class Writer(gguf.GGUFWriter):
        """gguf-py refuses empty arrays, which the format allows and llama.cpp needs: a
        byte-level vocabulary without merges must still carry ``tokenizer.ggml.merges``."""

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                element = sub_type if sub_type is not None else gguf.GGUFValueType.STRING
                return head + self._pack("I", element) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(str(path), arch)


def write_gguf(
    path: Path,
    arch: str,
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    vocab: Any,
    name: str,
    quantization: str,
    finetune: str | None = None,
) -> None:
    import gguf

    F = gguf.LlamaFileType
    writer = gguf_writer(path, arch)
    writer.add_name(name)
    if finetune and finetune != name:
        writer.add_finetune(finetune)  # the stage the weights come from
    writer.add_file_type(
        F.ALL_F32 if quantization == "f32" else F[f"MOSTLY_{quantization.upper()}"]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in meta.items():
        if isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    write_vocab(writer, vocab)
    T = gguf.GGMLQuantizationType
    for tname, t in tensors.items():
        if t.qtype not in (T.F16, T.F32):
            writer.add_tensor(tname, gguf.quants.quantize(t.values, t.qtype), raw_dtype=t.qtype)
        else:
            writer.add_tensor(tname, t.values.astype("float16" if t.qtype == T.F16 else "float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float):
        import numpy as np

        return bool(np.float32(a) == np.float32(b))
    return a == b


def read_back(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Problems found when reading ``path`` back (empty when it holds exactly what was
    meant), and the largest relative dequantization error."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    problems: list[str] = []
    got = {t.name: t for t in reader.tensors}
    if set(got) != set(tensors):
        problems.append(
            f"tensors missing {sorted(set(tensors) - set(got))}, "
            f"unexpected {sorted(set(got) - set(tensors))}"
        )
    worst = 0.0
    for name in sorted(set(got) & set(tensors)):
        t, want = got[name], tensors[name]
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        if shape != want.values.shape or t.tensor_type != want.qtype:
            problems.append(
                f"{name}: {t.tensor_type.name} {shape}, meant {want.qtype.name} {want.values.shape}"
            )
            continue
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        scale = float(np.abs(want.values).max()) or 1.0
        err = float(np.abs(values - want.values).max()) / scale
        worst = max(worst, err)
        if err > VALUE_TOLERANCE[t.tensor_type.name]:
            problems.append(f"{name}: values off by {err:.1e} of its largest magnitude")
    for key, value in meta.items():
        field = reader.fields.get(key)
        if field is None or not _same(field.contents(), value):
            problems.append(
                f"{key}: {None if field is None else field.contents()!r}, meant {value!r}"
            )
    return {"problems": problems, "max_relative_error": worst, "tensors": len(got)}


def gguf_model(path: Path, hf: HfModel) -> Any:
    """The file as transformers reads GGUF: its own dequantization and reversal of
    llama.cpp's layout, q/k permutation included."""
    import torch
    from transformers import AutoModelForCausalLM

    # transformers maps GPT-2's GGUF keys onto GPT2Config only in part (not n_positions
    # nor n_inner), and a head size of its own (key_length) not at all, so those get the
    # config (read_back checks the metadata); others are read from their own metadata.
    arch = hf.arch
    own_heads = arch.head_dim is not None and arch.head_dim * arch.heads != arch.hidden
    config = {}
    if hf.family.name == "gpt2" or own_heads:
        config = {"config": _written_config(hf.model.config, arch_name(hf.family))}
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, **config
    ).eval()


def _written_config(config: Any, written: str) -> Any:
    """``config`` as the architecture the file is written as (a Mistral's as ``llama``):
    transformers reads a GGUF by the config's model type, and knows no ``mistral`` one."""
    if config.model_type == written:
        return config
    from transformers import AutoConfig

    skip = ("model_type", "architectures", "transformers_version")
    return AutoConfig.for_model(
        written, **{k: v for k, v in config.to_dict().items() if k not in skip}
    )


def logits_check(
    model: Any, hf: HfModel, stage_dir: Path, base_dir: Path | None = None
) -> dict[str, float]:
    """The file's logits (``gguf_model``) against the megatron model's."""
    import torch

    ids = random_ids(hf.vocab, 2, min(hf.arch.seq_len, 32))
    with torch.no_grad():
        logits = model(ids).logits.float()
    reference = megatron_logits(stage_dir, ids, base_dir)
    return {
        "max_logit_diff": float((logits - reference).abs().max()),
        "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
    }


def export_gguf(ctx: Any, export: Any) -> None:
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as T

    from llmbuild.errors import UserError

    stage, tokenizer = inputs(ctx)
    if stage.architecture.rope_scaling is not None:
        raise UserError(
            f"{ctx.node}: GGUF export of a model with rope scaling "
            f"({stage.architecture.rope_scaling.kind}) is not supported yet; export hf instead"
        )
    hf = hf_model(stage, tokenizer, ctx.node)
    state = {k: v.detach().float().numpy() for k, v in hf.model.state_dict().items()}
    if hf.arch.tie_embeddings:
        state.pop("lm_head.weight", None)
    tensors = gguf_tensors(state, hf.arch, hf.family, export.quantization)
    vocab = gguf_vocab(tokenizer, hf.vocab)
    meta = arch_metadata(hf.arch, hf.family, hf.vocab)
    arch = arch_name(hf.family)
    path = ctx.out_dir / FILE
    name = ctx.config.model_name or hf.name
    finetune = ctx.config.finetune or hf.name  # the stage's name now, not when it was built
    write_gguf(path, arch, tensors, meta, vocab, name, export.quantization, finetune=finetune)
    expected = {
        **meta,
        "general.architecture": arch,
        "general.name": name,
        "tokenizer.ggml.model": vocab.model,
    }
    for key, token_id in vocab.special.items():
        expected[SPECIAL_KEYS[key]] = token_id
    if vocab.tokens:
        expected["tokenizer.ggml.tokens"] = vocab.tokens
    if vocab.merges is not None:
        expected["tokenizer.ggml.merges"] = vocab.merges
    check = read_back(path, tensors, expected)
    if check["problems"]:
        raise VerificationError(
            f"{FILE} does not hold what was written: " + "; ".join(check["problems"][:5])
        )
    model = gguf_model(path, hf)
    logits = logits_check(model, hf, *stage.dirs)
    if export.quantization == "f32" and not logits["max_logit_diff"] <= F32_LOGIT_TOLERANCE:
        raise VerificationError(
            f"{FILE} read by transformers gives logits {logits['max_logit_diff']:.2e} away "
            f"from the trained model's (tolerance {F32_LOGIT_TOLERANCE:.0e})"
        )
    needed = MIN_TOP1_AGREEMENT[export.quantization]
    if logits["top1_agreement"] < needed:
        raise VerificationError(
            f"{FILE} read by transformers picks the trained model's top-1 token at only "
            f"{logits['top1_agreement']:.0%} of positions (needed {needed:.0%})"
        )
    heldout = heldout_perplexity(ctx, lambda ids: model(ids).logits, hf, export.max_batches)
    ctx.metrics.update(
        {
            **logits,
            **heldout,
            "format": "gguf",
            "quantization": export.quantization,
            "architecture": arch,
            "tokenizer_model": vocab.model,
            "tensors": check["tensors"],
            "max_relative_error": check["max_relative_error"],
            "gguf_bytes": path.stat().st_size,
        }
    )
    if vocab.model == "none":
        ctx.note(
            f"the tokenizer has no GGUF form ({_tokenizer_kind(tokenizer)}): {FILE} carries no "
            "vocabulary, so a GGUF runtime cannot encode text for it; use the tokenizer of an "
            "hf export of the same stage"
        )
    if vocab.model == "gpt2" and vocab.pre == "default" and vocab.merges:
        ctx.note(
            "the tokenizer splits text before its merges in a way llama.cpp knows by no "
            f"name: {FILE} says tokenizer.ggml.pre = default, and llama.cpp's default split "
            "may encode some text to other tokens than the tokenizer does"
        )
    quantized = sum(t.qtype not in (T.F32, T.F16) for t in tensors.values())
    ctx.metrics["quantized_tensors"] = quantized
    if export.quantization in QUANTIZED and not quantized:
        block = GGML_QUANT_SIZES[T[export.quantization.upper()]][0]
        ctx.note(
            f"no matrix has rows that fill whole {export.quantization} blocks of {block}: "
            f"every one is stored as f16, and {FILE} is an f16 file (its header says "
            f"{export.quantization}); a hidden and ffn_hidden divisible by {block} quantize"
        )
    ctx.log.info(
        "gguf export verified: %d tensors, largest relative error %.1e, max logit "
        "difference %.2e, top-1 agreement %.1f%%",
        check["tensors"],
        check["max_relative_error"],
        logits["max_logit_diff"],
        100 * logits["top1_agreement"],
    )


def _tokenizer_kind(tokenizer: Any) -> str:
    """What the tokenizer is, as the note on a GGUF without a vocabulary says it."""
    kind = tokenizer.info.kind
    return "a char vocabulary beyond ASCII" if kind == "char" else f"a {kind} tokenizer"
