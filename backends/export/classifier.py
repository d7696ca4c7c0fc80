"""A classify stage, or a reward model, as a transformers ``<Family>ForSequenceClassification``
directory: the family's weights without the language-model head, the classifier (or the
reward's value head, one output named ``reward``) as ``score``, and the label names as
``id2label``; its tokenizer puts texts in the form the stage read them (a decoder's pair
after an end-of-sequence token, a reward model's text ending with one, an encoder's
``[CLS] text [SEP] pair [SEP]``). Proven by loading it with
``AutoModelForSequenceClassification`` and comparing its logits with the megatron
model's, on a right-padded batch of texts of that form ending at different positions,
and on texts put through the exported tokenizer."""

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


def hf_classifier(
    stage: StageArtifact, tokenizer: TokenizerArtifact, node: str, tok: Any
) -> HfModel:
    """The classifier converted to transformers (float32), checked to load completely;
    ``tok``: its transformers tokenizer (``classifier_tokenizer``), whose pad token the
    model's config names."""
    from transformers import AutoModelForSequenceClassification

    labels = stage.head_outputs
    family, config, weights = hf_parts(stage, tokenizer, node)
    # A pad token the export added past the embedding's rows gets its row once the
    # weights are in (``_pad_row``): transformers refuses a padding_idx out of range.
    added = tok.pad_token_id >= config.vocab_size
    config.pad_token_id = None if added else tok.pad_token_id
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
    if added:
        _pad_row(model, tok.pad_token_id)
    return HfModel(
        model.eval(),
        stage.architecture,
        family,
        stage.vocab_size,
        {**tokenizer.special_ids, "pad_token_id": tok.pad_token_id},
        stage.name,
        offset,
    )


def _pad_row(model: Any, pad: int) -> None:
    """An embedding row for a pad token the export added: zeros (no text holds it, and a
    right-padded text's last token attends to none of its pads)."""
    import torch

    model.resize_token_embeddings(pad + 1, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[pad:] = 0.0
    model.config.pad_token_id = pad


PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<llmbuild_pad>")


def classifier_tokenizer(stage: StageArtifact, tokenizer: TokenizerArtifact) -> Any:
    """The stage's tokenizer for transformers, putting texts in the form the stage read
    them: ``tok(text)`` and ``tok(text, pair)`` give the stage's ids, and ``padding=True``
    pads with a token transformers' classifier can tell from the text.

    A decoder's ``ForSequenceClassification`` reads each text's last token that is not
    the pad token, so a decoder whose pad token is its end of sequence (no pad token of
    its own) gets a new one: a reward model's texts end with that token, and a classifier's
    pairs hold it. An encoder's texts get ``[CLS] text [SEP] pair [SEP]``, and its padding
    is masked."""
    from llmbuild.backends.export.run import encoder_template
    from tokenizers.processors import TemplateProcessing

    tok = tokenizer.hf_tokenizer()
    if stage.architecture.encoder:
        encoder_template(tok, tokenizer)
        if tok.pad_token is None:
            tok.pad_token = tokenizer.tokenizer.id_to_token(tokenizer.pad_id)
        return tok
    eos, eos_id = tokenizer.info.eos_token, tokenizer.eos_id
    end = f" {eos}" if stage.config.get("kind") == "reward" else ""
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A{end}", pair=f"$A {eos} $B{end}", special_tokens=[(eos, eos_id)]
    )
    if tok.pad_token is None or tok.pad_token_id == eos_id:
        vocab = tok.get_vocab()
        tok.add_special_tokens({"pad_token": next(n for n in PAD_NAMES if n not in vocab)})
    return tok


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
    # The final norm's bias by its name in transformers: a gpt2-style model without norm
    # biases (norm_bias) exports zeros there, which take ``b`` as well.
    with_bias = arch.model_copy(update={"norm_bias": True}) if not arch.norm_bias else arch
    norm = next(
        (
            r.theirs[0]
            for r in family.rules(with_bias)
            if r.ours == ("decoder.final_layernorm.bias",)
        ),
        None,
    )
    if norm is None or norm not in state or not float(torch.dot(w[0], w[0])):
        return float(b[0])
    state[norm] = state[norm].float() + b[0] * w[0] / torch.dot(w[0], w[0])
    return 0.0


def _form(stage: StageArtifact, tokenizer: TokenizerArtifact) -> tuple[int | None, bool, bool]:
    """How the stage reads a text: an encoder's start token (None for a decoder), whether
    it learned pairs (an encoder's token types are checked on pairs too), and whether each
    text ends with an end-of-sequence token (a reward model's answers do)."""
    from llmbuild.backends.megatron.classifier import text_start

    start = text_start(stage.config, tokenizer)
    return start, stage.paired is not False, stage.config.get("kind") == "reward"


def stage_docs(
    stage: StageArtifact, tokenizer: TokenizerArtifact, texts: list[tuple[Any, Any]], seq: int
) -> list[tuple[Any, Any]]:
    """``(ids, token types)`` of texts and pairs (token ids; a pair None for a lone text) as
    the stage reads them (``fit_text``)."""
    import numpy as np
    from llmbuild.backends.megatron.posttrain_data import fit_text

    start, _, ends = _form(stage, tokenizer)
    eos = tokenizer.eos_id
    out = []
    for text, pair in texts:
        ids, _, types = fit_text(text, pair, seq - ends, eos, start)
        out.append((np.append(ids, eos) if ends else ids, types))
    return out


def random_texts(
    stage: StageArtifact, tokenizer: TokenizerArtifact, seq: int, seed: int = 0
) -> list[tuple[Any, Any]]:
    """Texts of random token ids and different lengths, every other one with a pair where
    the stage learned pairs; no special token inside."""
    import torch

    g = torch.Generator().manual_seed(seed)
    usable = _usable_ids(stage, tokenizer)
    _, paired, _ = _form(stage, tokenizer)
    out = []
    for i, n in enumerate((seq, max(1, seq // 2), max(1, seq // 3), 1, max(1, seq // 4))):
        ids = usable[torch.randint(0, len(usable), (n,), generator=g)].tolist()
        pair = usable[torch.randint(0, len(usable), (max(1, n // 2),), generator=g)].tolist()
        out.append((ids, pair if paired and i % 2 else None))
    return out


def _usable_ids(stage: StageArtifact, tokenizer: TokenizerArtifact) -> Any:
    """The token ids a text may hold: every one but the special tokens."""
    import torch

    special = {i for i in tokenizer.special_ids.values() if i is not None}
    return torch.tensor([i for i in range(stage.vocab_size) if i not in special])


def batch_of(docs: list[tuple[Any, Any]], pad: int, encoder: bool) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` (and an encoder's ``token_type_ids``)
    of ``docs``, as transformers' tokenizer pads them."""
    import torch

    seq = max(len(ids) for ids, _ in docs)
    ids = torch.full((len(docs), seq), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for r, (row, kinds) in enumerate(docs):
        ids[r, : len(row)] = torch.as_tensor(row)
        mask[r, : len(row)] = 1
        if kinds is not None:
            types[r, : len(row)] = torch.as_tensor(kinds)
    feed = {"input_ids": ids, "attention_mask": mask}
    return {**feed, "token_type_ids": types} if encoder else feed


def tokenized_texts(
    stage: StageArtifact, tokenizer: TokenizerArtifact, tok: Any, seq: int
) -> list[tuple[dict[str, Any], list[tuple[Any, Any]]]]:
    """Texts put through the exported tokenizer (``tok(texts, pairs, padding=True)``),
    each batch with the stage's own ``(ids, types)`` of them; raises VerificationError
    where the tokenizer gives other ids than the stage read."""
    import torch

    g = torch.Generator().manual_seed(1)
    usable = _usable_ids(stage, tokenizer)
    _, paired, _ = _form(stage, tokenizer)

    def text(n: int) -> str:  # never empty: no special token (which decoding would drop)
        ids = usable[torch.randint(0, len(usable), (n,), generator=g)].tolist()
        return tokenizer.tokenizer.decode(ids, skip_special_tokens=True)

    lone = [text(n) for n in (seq // 4, seq // 8, 2)]
    batches = [(lone, None)] + ([(lone, [text(n) for n in (3, seq // 8, seq // 4)])] * paired)
    names = ["input_ids", "attention_mask"] + ["token_type_ids"] * stage.architecture.encoder
    out = []
    for texts, pairs in batches:
        feed = tok(texts, pairs, padding=True, return_tensors="pt")
        encoded = [
            (tokenizer.encode(t), None if pairs is None else tokenizer.encode(pairs[i]))
            for i, t in enumerate(texts)
        ]
        docs = stage_docs(stage, tokenizer, encoded, 10 * seq)
        for r, (ids, _) in enumerate(docs):
            got = feed["input_ids"][r][feed["attention_mask"][r].bool()].tolist()
            if got != list(ids):
                raise VerificationError(
                    f"the exported tokenizer gives {got} for {texts[r]!r}"
                    f"{'' if pairs is None else f' and {pairs[r]!r}'}, where the stage read "
                    f"{list(ids)}"
                )
        out.append(({k: feed[k] for k in names}, docs))
    return out


def checks(
    stage: StageArtifact, tokenizer: TokenizerArtifact, tok: Any
) -> list[tuple[dict[str, Any], Any]]:
    """Batches to prove an export on, each with our classifier's logits: random texts in
    the stage's form, right-padded, and texts put through the exported tokenizer."""
    from llmbuild.backends.megatron.classifier import class_logits, load_classifier
    from llmbuild.backends.megatron.posttrain_data import LabeledTexts

    model, config, _ = load_classifier(stage)
    seq = min(config["architecture"]["seq_len"], 32)
    encoder = stage.architecture.encoder  # padding hidden by the mask, as transformers does
    docs = stage_docs(stage, tokenizer, random_texts(stage, tokenizer, seq), seq)
    batches = [(batch_of(docs, tok.pad_token_id, encoder), docs)]
    batches += tokenized_texts(stage, tokenizer, tok, seq)
    out = []
    for feed, rows in batches:
        width = feed["input_ids"].shape[1]
        docs = [(ids, 0, types) for ids, types in rows]
        samples = LabeledTexts(docs, width, tokenizer.pad_id, encoder=encoder)
        out.append((feed, class_logits(model, samples, len(rows))))
    return out


def max_class_logit_difference(
    hf_dir: Path, batches: list[tuple[dict[str, Any], Any]], offset: float = 0.0
) -> float:
    """Our classifier's logits against the saved directory's (plus the score ``offset`` it
    has no place for), on ``batches`` (``checks``)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    theirs_model = AutoModelForSequenceClassification.from_pretrained(
        str(hf_dir), dtype=torch.float32
    ).eval()
    diff = 0.0
    with torch.no_grad():
        for feed, ours in batches:
            theirs = theirs_model(**feed).logits.float()
            diff = max(diff, float((ours - theirs - offset).abs().max()))
    return diff


def export_hf_classifier(
    ctx: Any, stage: StageArtifact, tokenizer: TokenizerArtifact, dtype: str
) -> None:
    import torch

    tok = classifier_tokenizer(stage, tokenizer)
    hf = hf_classifier(stage, tokenizer, ctx.node, tok)
    hf.model.to(getattr(torch, dtype)).save_pretrained(str(ctx.out_dir), safe_serialization=True)
    save_hf_extras(hf, ctx.out_dir, tokenizer, tok)
    diff = max_class_logit_difference(ctx.out_dir, checks(stage, tokenizer, tok), hf.score_offset)
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


def _onnx_export(model: Any, seq_len: int, path: Path, opset: int, encoder: bool) -> None:
    import torch
    from llmbuild.backends.export.onnx_export import export_program

    class Logits(torch.nn.Module):
        """``input_ids, attention_mask -> logits [batch, labels]`` (right padding)."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    class TypedLogits(Logits):
        """An encoder's: ``input_ids, attention_mask, token_type_ids -> logits`` (a pair's
        tokens are type 1)."""

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits

    export_program((TypedLogits if encoder else Logits)(model), seq_len, path, opset, types=encoder)


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
    """The classifier as ONNX (``input_ids, attention_mask -> logits``; an encoder's with
    ``token_type_ids`` too), proven with onnxruntime against our classifier on the batches
    of ``checks``; ``int8`` then quantizes it and proves it picks the float32 model's label
    on the first."""
    import tempfile

    from llmbuild.backends.export.onnx_export import (
        MIN_INT8_AGREEMENT,
        _quantize_int8,
        _session,
    )
    from llmbuild.backends.export.onnx_export import TOLERANCE as ONNX_TOLERANCE

    tok = classifier_tokenizer(stage, tokenizer)
    hf = hf_classifier(stage, tokenizer, ctx.node, tok)
    batches = [
        ({k: v.numpy() for k, v in feed.items()}, ours.numpy())
        for feed, ours in checks(stage, tokenizer, tok)
    ]
    feed = batches[0][0]
    out: Path = ctx.out_dir
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        _onnx_export(hf.model, hf.arch.seq_len, fp32, export.opset, hf.arch.encoder)
        session = _session(fp32)
        runs = [(session.run(["logits"], f)[0], ours) for f, ours in batches]
        fp32_logits = runs[0][0]
        diff = max(float(abs(got + hf.score_offset - ours).max()) for got, ours in runs)
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
    save_hf_extras(hf, out, tokenizer, tok)
    metrics["onnx_bytes"] = (out / "model.onnx").stat().st_size
    ctx.metrics.update(metrics)
    _note_offset(ctx, hf)
    ctx.log.info("onnx classifier export verified: max logit difference %.2e", diff)
