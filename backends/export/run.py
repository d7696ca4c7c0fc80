"""The ``export:<format>@<stage>`` node: builds the Hugging Face model every format starts
from and dispatches on the format. ``hf``: a transformers model directory (weights,
config, tokenizer with chat template, generation config), proven by loading it with
its family's auto class (``AutoModelForCausalLM``, ``AutoModelForMaskedLM`` for an encoder)
and comparing its logits with the megatron model's. ``peft``,
``onnx`` and ``gguf`` live in their own modules. A stage that holds only LoRA adapters is
exported with its base's weights merged in (the base found through the stage's record)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild.backends.megatron.artifact import StageArtifact
from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


class VerificationError(RuntimeError):
    """An export does not reproduce the trained model: the conversion is wrong."""


@dataclass(frozen=True)
class HfModel:
    """The trained stage as an in-memory transformers model (float32, eval mode)."""

    model: Any
    arch: Any
    family: Any
    """The family it is exported as (``llmbuild.backends.families``)."""
    vocab: int
    special: dict[str, int]
    """``bos_token_id``, ``eos_token_id``, ``pad_token_id``."""
    name: str
    """The stage's name."""
    score_offset: float = 0.0
    """A sequence head's bias that transformers' model has no place for: its scores are
    the stage's minus this (see ``classifier.fold_score_bias``)."""


def megatron_logits(
    stage_dir: Path, ids: Any, base_dir: Path | None = None, padded: bool = False
) -> Any:
    """The trained model's float32 logits for ``ids`` ``[batch, seq]``, vocab rows only
    unless ``padded`` (``base_dir``: the base of a stage that holds only adapters)."""
    import torch
    from llmbuild.backends.megatron.generate import load_model

    ours, config = load_model(stage_dir, base_dir)
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
    with torch.no_grad():
        logits = ours(ids, pos, None).float()
    return logits if padded else logits[..., : config["vocab_size"]]


def random_ids(vocab: int, batch: int, seq: int, seed: int = 0) -> Any:
    import torch

    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def max_logit_difference(
    stage_dir: Any,
    hf_dir: Any,
    seq: int,
    vocab: int,
    seed: int = 0,
    base_dir: Path | None = None,
    family: Any = None,
) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    auto = AutoModelForCausalLM if family is None else family.auto_model()
    theirs = auto.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ids = random_ids(vocab, 2, seq, seed)
    with torch.no_grad():
        b = theirs(ids).logits.float()
    return float((megatron_logits(stage_dir, ids, base_dir) - b).abs().max())


def inputs(ctx: Any, slot: str = "model") -> tuple[StageArtifact, TokenizerArtifact]:
    """The exported stage and the tokenizer of an export node."""
    return StageArtifact.open(ctx.input(slot)), TokenizerArtifact.open(ctx.input("tokenizer").path)


def hf_parts(
    stage: StageArtifact, tokenizer: TokenizerArtifact, node: str
) -> tuple[Any, Any, dict[str, Any]]:
    """A stage's family, transformers config and weights by transformers' names; a stage
    holding only adapters has them merged into its base's weights."""
    from llmbuild.backends.families import Unsupported, family_of

    from llmbuild.errors import UserError

    arch, vocab = stage.architecture, stage.vocab_size
    try:
        weights = stage.weights()
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"{node}: cannot read the weights of {stage.node}: {e}") from None
    family = family_of(arch)
    try:
        config = family.hf_config(arch, vocab, tokenizer.special_ids)
    except Unsupported as e:
        raise UserError(
            f"{node}: cannot export this architecture as {family.hf_class}: {e}"
        ) from None
    return family, config, family.to_hf(weights, arch, vocab)


def hf_model(stage: StageArtifact, tokenizer: TokenizerArtifact, node: str) -> HfModel:
    """A stage converted to transformers (float32), checked to load completely."""
    arch, vocab, special = stage.architecture, stage.vocab_size, tokenizer.special_ids
    family, config, state = hf_parts(stage, tokenizer, node)
    model = family.auto_model().from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (arch.tie_embeddings and m in family.tied)]
    if missing or unexpected:
        raise RuntimeError(
            f"weight conversion mismatch: missing {missing}, unexpected {unexpected}"
        )
    if arch.tie_embeddings:
        model.tie_weights()
    return HfModel(model.eval(), arch, family, vocab, special, stage.name)


def save_hf_extras(hf: HfModel, out: Path, tokenizer: TokenizerArtifact, tok: Any = None) -> None:
    """Tokenizer files (with the chat template) and the generation config, so ``out``
    loads with ``AutoTokenizer`` and generates with the right special tokens; ``tok``: the
    transformers tokenizer to save, when the export made its own (a classifier's)."""
    from transformers import GenerationConfig

    if tok is None:
        tok = tokenizer.hf_tokenizer()
        if hf.arch.encoder:
            encoder_template(tok, tokenizer)
    tok.model_max_length = hf.arch.positions  # what truncation=True cuts to: the model's context
    if tok.pad_token is None:  # a checkpoint's tokenizer without one (GPT-2's, Llama's):
        # the model pads with eos (its config's pad_token_id), and padding=True works
        tok.pad_token = tokenizer.info.pad_token or tokenizer.info.eos_token
    tok.save_pretrained(str(out))
    _portable_config(out / "tokenizer_config.json")
    # A chat model's reply ends at its end-of-turn token as well as at eos: generate()
    # with these defaults stops there.
    stops = tokenizer.stop_ids
    eos = stops[0] if len(stops) == 1 else stops
    GenerationConfig(**{**hf.special, "eos_token_id": eos}).save_pretrained(str(out))


PORTABLE_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
"""transformers 5 names a tokenizer of ``tokenizer.json`` alone ``TokenizersBackend``, a
class transformers 4 lacks; ``PreTrainedTokenizerFast`` is the same class in 5, and the
one 4 loads."""


def _portable_config(config: Path) -> None:
    """A saved tokenizer's settings as transformers 4 and 5 both read them: a class both
    have, and the special tokens past bos, eos, unk and pad as ``additional_special_tokens``
    (5 writes a list under ``extra_special_tokens``, where 4 wants a table of names)."""
    if not config.is_file():
        return
    settings = json.loads(config.read_text())
    portable = PORTABLE_CLASSES.get(settings.get("tokenizer_class"))
    if portable:
        settings["tokenizer_class"] = portable
    extra = settings.get("extra_special_tokens")
    if isinstance(extra, list):
        del settings["extra_special_tokens"]
        settings["additional_special_tokens"] = extra
    config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def encoder_template(tok: Any, tokenizer: TokenizerArtifact) -> None:
    """An encoder's texts as it was trained on them, ``[CLS] text [SEP]`` and ``[CLS] text
    [SEP] pair [SEP]`` with token types 0 then 1, added by the exported tokenizer itself
    (a pretrained BERT tokenizer already does this)."""
    from tokenizers.processors import TemplateProcessing

    if "token_type_ids" not in tok.model_input_names:  # a pair's types reach the model
        names = ["input_ids", "token_type_ids", "attention_mask"]
        tok.model_input_names = tok.init_kwargs["model_input_names"] = names
    backend = tok.backend_tokenizer
    adds = backend.encode("a").ids != backend.encode("a", add_special_tokens=False).ids
    if adds or tokenizer.bos_id is None:
        return
    start, sep = tokenizer.info.bos_token, tokenizer.info.eos_token
    backend.post_processor = TemplateProcessing(
        single=f"{start} $A {sep}",
        pair=f"{start} $A {sep} $B:1 {sep}:1",
        special_tokens=[(start, tokenizer.bos_id), (sep, tokenizer.eos_id)],
    )


def save_hf(hf: HfModel, out: Path, tokenizer: TokenizerArtifact, dtype: str) -> None:
    """A transformers model directory: weights in ``dtype``, config, tokenizer files and
    generation config."""
    import torch

    hf.model.to(getattr(torch, dtype)).save_pretrained(str(out), safe_serialization=True)
    save_hf_extras(hf, out, tokenizer)


def verify_hf(
    hf: HfModel, hf_dir: Path, stage: StageArtifact, dtype: str, label: str = "the export"
) -> float:
    """The largest logit difference of the saved directory from the megatron model's;
    a ``VerificationError`` past the dtype's tolerance."""
    stage_dir, base_dir = stage.dirs
    diff = max_logit_difference(
        stage_dir, hf_dir, min(hf.arch.seq_len, 32), hf.vocab, base_dir=base_dir, family=hf.family
    )
    if not diff <= TOLERANCE[dtype]:  # NaN fails too
        raise VerificationError(
            f"the logits of {label} differ from the trained model's by {diff:.2e} "
            f"(tolerance {TOLERANCE[dtype]:.0e}): the conversion is wrong"
        )
    return diff


def export_hf(ctx: Any, dtype: str) -> None:
    stage, tokenizer = inputs(ctx)
    if stage.head_outputs:  # a classifier, a reward model: <Family>ForSequenceClassification
        from llmbuild.backends.export.classifier import export_hf_classifier

        return export_hf_classifier(ctx, stage, tokenizer, dtype)
    hf = hf_model(stage, tokenizer, ctx.node)
    save_hf(hf, ctx.out_dir, tokenizer, dtype)
    diff = verify_hf(hf, ctx.out_dir, stage, dtype)
    ctx.metrics.update(
        {
            "max_logit_diff": diff,
            "format": "hf",
            "dtype": dtype,
            "architecture": type(hf.model).__name__,
        }
    )
    ctx.log.info("hf export verified: max logit difference %.2e", diff)


def run(ctx: Any) -> None:
    from llmbuild.backends.megatron.cpu import node_threads

    with node_threads(ctx):
        _run(ctx)


def _run(ctx: Any) -> None:
    export = ctx.config.export
    if export.format == "hf":
        export_hf(ctx, export.dtype)
    elif export.format == "peft":
        from llmbuild.backends.export.peft_export import export_peft

        export_peft(ctx)
    elif export.format == "onnx":
        from llmbuild.backends.export.onnx_export import export_onnx

        export_onnx(ctx, export)
    elif export.format == "gguf":
        from llmbuild.backends.export.gguf_export import export_gguf

        export_gguf(ctx, export)
    else:
        raise NotImplementedError(f"{export.format} export is not implemented yet")
