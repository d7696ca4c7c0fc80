"""A classify stage, or a reward model, as a transformers ``<Family>ForSequenceClassification``
directory: the family's weights without the language-model head, the classifier (or the
reward's value head, one output named ``reward``) as ``score``, and the label names as
``id2label``. Proven by loading it with ``AutoModelForSequenceClassification`` and
comparing its logits with the megatron model's, on a right-padded batch whose texts end at
different positions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmbuild.backends.export.run import (
    TOLERANCE,
    HfModel,
    VerificationError,
    hf_parts,
    save_hf_extras,
)
from llmbuild.backends.megatron.artifact import StageArtifact
from llmbuild.backends.tokenizer.artifact import TokenizerArtifact


def hf_classifier(stage: StageArtifact, tokenizer: TokenizerArtifact, node: str) -> HfModel:
    """The classifier converted to transformers (float32), checked to load completely."""
    from transformers import AutoModelForSequenceClassification

    labels = stage.head_outputs
    family, config, weights = hf_parts(stage, tokenizer, node)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    if stage.multi_label:  # a sigmoid per label, as transformers' pipelines then apply
        config.problem_type = "multi_label_classification"
    state = {k: v for k, v in weights.items() if not k.startswith(family.lm_head)}
    head = stage.head()
    offset = 0.0
    if "classifier.score.bias" in head and "classifier.score.bias" not in family.classifier_names:
        offset = fold_score_bias(family, stage.architecture, state, head)
    for ours, theirs in family.classifier_names.items():
        if ours in head:
            state[theirs] = head[ours].float()
    model = AutoModelForSequenceClassification.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"weight conversion mismatch: missing {missing}, unexpected {unexpected}"
        )
    return HfModel(
        model.eval(),
        stage.architecture,
        family,
        stage.vocab_size,
        tokenizer.special_ids,
        stage.name,
        offset,
    )


def fold_score_bias(family: Any, arch: Any, state: dict[str, Any], head: dict[str, Any]) -> float:
    """A decoder's ``ForSequenceClassification`` score has no bias; a reward model's has one
    (``b``). It moves into the final norm's bias, exactly: ``w . (g n + beta) + b`` is
    ``w . (g n + beta + b w / |w|^2)``. Returns what is left over: 0, or all of ``b`` when
    the final norm has no bias (RMSNorm), the export's scores then being the stage's minus
    it."""
    import torch

    w, b = head["classifier.score.weight"].float(), head["classifier.score.bias"].float()
    if w.shape[0] != 1:
        raise ValueError(f"a score bias of {w.shape[0]} outputs has no place in transformers")
    norm = next(
        (r.theirs[0] for r in family.rules(arch) if r.ours == ("decoder.final_layernorm.bias",)),
        None,
    )
    if norm is None or norm not in state or not float(torch.dot(w[0], w[0])):
        return float(b[0])
    state[norm] = state[norm].float() + b[0] * w[0] / torch.dot(w[0], w[0])
    return 0.0


def verification_batch(vocab: int, pad: int, seq: int, seed: int = 0) -> list[list[int]]:
    """Random texts of different lengths (no pad token inside, so transformers finds each
    one's last token as we do)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = [seq, max(1, seq // 2), max(1, seq // 3), 1]
    out = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=g)
        ids[ids == pad] = (pad + 1) % vocab
        out.append(ids.tolist())
    return out


def reference(stage: StageArtifact, pad: int) -> tuple[Any, Any, Any]:
    """A right-padded verification batch (ids, mask) and our classifier's logits on it."""
    import torch
    from llmbuild.backends.megatron.classifier import class_logits, load_classifier
    from llmbuild.backends.megatron.posttrain_data import LabeledTexts

    model, config, _ = load_classifier(stage)
    seq = min(config["architecture"]["seq_len"], 32)
    texts = verification_batch(config["vocab_size"], pad, seq)
    encoder = stage.architecture.encoder  # padding hidden by the mask, as transformers does
    samples = LabeledTexts([(t, 0) for t in texts], seq, pad, encoder=encoder)
    ours = class_logits(model, samples, len(texts))
    ids = torch.full((len(texts), seq), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, t in enumerate(texts):
        ids[r, : len(t)] = torch.tensor(t)
        mask[r, : len(t)] = 1
    return ids, mask, ours


def max_class_logit_difference(
    stage: StageArtifact, hf_dir: Path, pad: int, offset: float = 0.0
) -> float:
    """Our classifier's logits against the saved directory's (plus the score ``offset`` it
    has no place for), on a right-padded batch."""
    import torch
    from transformers import AutoModelForSequenceClassification

    ids, mask, ours = reference(stage, pad)
    theirs_model = AutoModelForSequenceClassification.from_pretrained(
        str(hf_dir), dtype=torch.float32
    ).eval()
    with torch.no_grad():
        theirs = theirs_model(input_ids=ids, attention_mask=mask).logits.float()
    return float((ours - theirs - offset).abs().max())


def export_hf_classifier(
    ctx: Any, stage: StageArtifact, tokenizer: TokenizerArtifact, dtype: str
) -> None:
    import torch

    hf = hf_classifier(stage, tokenizer, ctx.node)
    hf.model.to(getattr(torch, dtype)).save_pretrained(str(ctx.out_dir), safe_serialization=True)
    save_hf_extras(hf, ctx.out_dir, tokenizer)
    diff = max_class_logit_difference(
        stage, ctx.out_dir, hf.special["pad_token_id"], hf.score_offset
    )
    if not diff <= TOLERANCE[dtype]:  # NaN fails too
        raise VerificationError(
            f"the class logits of the export differ from the trained classifier's by "
            f"{diff:.2e} (tolerance {TOLERANCE[dtype]:.0e}): the conversion is wrong"
        )
    ctx.metrics.update(
        {
            "max_logit_diff": diff,
            "format": "hf",
            "dtype": dtype,
            "architecture": type(hf.model).__name__,
            "labels": list(stage.head_outputs),
        }
    )
    _note_offset(ctx, hf)
    ctx.log.info("hf classifier export verified: max logit difference %.2e", diff)


def _note_offset(ctx: Any, hf: HfModel) -> None:
    if hf.score_offset:
        ctx.metrics["score_offset"] = hf.score_offset
        ctx.note(
            f"transformers' {type(hf.model).__name__} has no score bias, and this "
            f"architecture's final norm none to take it: the export's rewards are the "
            f"stage's minus {hf.score_offset:.4g}, the same for every text (rankings and "
            "differences are unchanged)"
        )


def _onnx_export(model: Any, seq_len: int, path: Path, opset: int) -> None:
    import torch
    from llmbuild.backends.export.onnx_export import export_program

    class Logits(torch.nn.Module):
        """``input_ids, attention_mask -> logits [batch, labels]`` (right padding)."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    export_program(Logits(model), seq_len, path, opset)


def _agreement(int8: Any, fp32: Any) -> float:
    """How often the int8 model decides as the float32 one: the same label, or for one
    score (a reward) the same order of each pair of texts."""
    if fp32.shape[-1] > 1:
        return float((int8.argmax(-1) == fp32.argmax(-1)).mean())
    a, b = int8[:, 0], fp32[:, 0]
    near = 0.1 * float(b.max() - b.min())  # pairs scored nearly alike may swap harmlessly
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a)) if abs(b[i] - b[j]) > near]
    same = sum((a[i] > a[j]) == (b[i] > b[j]) for i, j in pairs)
    return same / len(pairs) if pairs else 1.0


def export_onnx_classifier(
    ctx: Any, export: Any, stage: StageArtifact, tokenizer: TokenizerArtifact
) -> None:
    """The classifier as ONNX (``input_ids, attention_mask -> logits``), proven with
    onnxruntime against our classifier on a right-padded batch; ``int8`` then quantizes
    it and proves it picks the float32 model's label on that batch."""
    import tempfile

    from llmbuild.backends.export.onnx_export import (
        MIN_INT8_AGREEMENT,
        _quantize_int8,
        _session,
    )
    from llmbuild.backends.export.onnx_export import TOLERANCE as ONNX_TOLERANCE

    hf = hf_classifier(stage, tokenizer, ctx.node)
    pad = hf.special["pad_token_id"]
    ids, mask, ours = reference(stage, pad)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    out: Path = ctx.out_dir
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        _onnx_export(hf.model, hf.arch.seq_len, fp32, export.opset)
        fp32_logits = _session(fp32).run(["logits"], feed)[0]
        diff = float(abs(fp32_logits + hf.score_offset - ours.numpy()).max())
        if not diff <= ONNX_TOLERANCE:  # NaN fails too
            raise VerificationError(
                f"onnxruntime's class logits differ from the trained classifier's by "
                f"{diff:.2e} (tolerance {ONNX_TOLERANCE:.0e}): the onnx export is wrong"
            )
        metrics: dict[str, Any] = {
            "format": "onnx",
            "opset": export.opset,
            "quantize": export.quantize,
            "max_logit_diff": diff,
            "labels": list(stage.head_outputs),
        }
        if export.quantize == "int8":
            _quantize_int8(fp32, out / "model.onnx", False)
            int8 = _session(out / "model.onnx").run(["logits"], feed)[0]
            agreement = _agreement(int8, fp32_logits)
            reward = fp32_logits.shape[-1] == 1
            metrics["int8_rank_agreement" if reward else "int8_label_agreement"] = agreement
            if agreement < MIN_INT8_AGREEMENT:
                what = "orders the texts as" if reward else "picks the label of"
                raise VerificationError(
                    f"the int8 model {what} the float32 one for only {agreement:.0%} of "
                    f"the {'pairs of ' if reward else ''}texts (needed "
                    f"{MIN_INT8_AGREEMENT:.0%})"
                )
        else:
            fp32.replace(out / "model.onnx")
    hf.model.config.save_pretrained(str(out))
    save_hf_extras(hf, out, tokenizer)
    metrics["onnx_bytes"] = (out / "model.onnx").stat().st_size
    ctx.metrics.update(metrics)
    _note_offset(ctx, hf)
    ctx.log.info("onnx classifier export verified: max logit difference %.2e", diff)
