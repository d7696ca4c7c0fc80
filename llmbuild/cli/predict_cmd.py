"""``llmbuild predict``: a built classifier's labels, with their probabilities, for texts
given on the command line or in a file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmbuild.cli.common import (
    add_spec_arguments,
    add_store_argument,
    open_store,
    ranged,
    stage_name,
)
from llmbuild.errors import UserError


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_store_argument(p)
    p.add_argument(
        "--stage", type=stage_name, help="classifier stage (default: the last classify stage)"
    )
    texts = p.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", action="append", help="a text to classify (repeatable)")
    texts.add_argument(
        "--file",
        type=Path,
        help="texts to classify: a .jsonl, .parquet, .csv or .tsv file of records with `text` (and "
        "`pair`), or one text per line",
    )
    p.add_argument("--pair", help="the second text of a pair, with one --text")
    p.add_argument(
        "--top", type=ranged(int, 1), default=3, help="labels shown per text (default 3)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per text")


def _texts(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    if args.text:
        if args.pair is not None and len(args.text) != 1:
            raise UserError("--pair goes with exactly one --text")
        return [(t, args.pair) for t in args.text]
    if args.file.suffix not in (".jsonl", ".parquet", ".csv", ".tsv"):
        try:
            lines = args.file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {args.file}: {e}") from None
        texts = [(line, None) for line in lines if line.strip()]
        if not texts:
            raise UserError(f"{args.file} holds no texts (one per line)")
        return texts
    from llmbuild.backends.data.readers import BadRecord, normalise, read_records
    from llmbuild.spec.data import Source

    source = Source(name="texts", path=str(args.file))
    out = []
    try:
        for rec in read_records(str(args.file), source):
            if isinstance(rec, BadRecord):
                raise rec
            pair = rec.data.get("pair")
            if pair is not None and not isinstance(pair, str):
                raise BadRecord(rec.where, "field 'pair' must be a string", "field")
            out.append((normalise(rec, source)["text"], pair))
    except BadRecord as e:
        said = str(e).replace(
            ": a source names the fields it reads, e.g. text_field)",
            "; predict reads the field 'text', and 'pair' for a second text)",
        )
        raise UserError(said) from None
    if not out:
        raise UserError(f"{args.file} holds no texts")
    return out


def _stage_node(resolved: Any, wanted: str | None) -> str:
    classifiers = [s.name for s in resolved.spec.stage if s.kind == "classify"]
    if wanted is None:
        if not classifiers:
            raise UserError(f"{resolved.path} has no classifier (a stage of kind classify)")
        if len(classifiers) > 1:
            others = ", ".join(classifiers[:-1])
            sys.stderr.write(
                f"predicting with {classifiers[-1]}, the last classifier ({others}: --stage)\n"
            )
        return f"stage:{classifiers[-1]}"
    if wanted not in classifiers:
        names = ", ".join(classifiers) or "none"
        raise UserError(
            f"{wanted!r} is not a classify stage of {resolved.path} (classifiers: {names})"
        )
    return f"stage:{wanted}"


def predict(
    stage_input: Any, tok_input: Any, texts: list[tuple[str, str | None]]
) -> tuple[tuple[str, ...], Any, bool]:
    """The label names, each text's probabilities ``[n, labels]``, and whether the
    classifier is multi-label (each label's probability its own, not summing to 1)."""
    from llmbuild.backends.megatron.artifact import StageArtifact
    from llmbuild.backends.megatron.classifier import class_logits, load_classifier, text_start
    from llmbuild.backends.megatron.posttrain_data import LabeledTexts, fit_text
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    tok = TokenizerArtifact.open(tok_input.path)
    stage = StageArtifact.open(stage_input)
    model, config, labels = load_classifier(stage)
    given = sum(pair is not None for _, pair in texts)
    if stage.paired is False and given:
        sys.stderr.write(
            f"warning: {stage_input.record.name} learned single texts, not pairs: {given} "
            "pairs are read after a separator it never saw in training\n"
        )
    elif stage.paired and given < len(texts):
        sys.stderr.write(
            f"warning: {stage_input.record.name} learned pairs of texts: {len(texts) - given} "
            "texts without a pair (--pair, or a 'pair' field) are scored alone\n"
        )
    seq = config["architecture"]["seq_len"]
    start = text_start(config, tok)
    encoded, cut, empty, unknown = [], 0, 0, 0
    unk = tok.unknown_id
    for text, pair in texts:
        own = tok.encode(text)
        ids, shortened, types = fit_text(
            own, None if pair is None else tok.encode(pair), seq, tok.eos_id, start
        )
        cut += shortened
        empty += not text.strip()
        # no character the tokenizer knows: nothing, or its unknown token alone
        unknown += bool(text.strip()) and all(i == unk for i in own)
        encoded.append((ids if len(ids) else [tok.eos_id], 0, types))
    if cut:
        sys.stderr.write(
            f"warning: {cut} of the texts are longer than the classifier's {seq} tokens: "
            "each is scored on its first ones (as in training)\n"
        )
    if empty:
        sys.stderr.write(f"warning: {empty} of the texts are empty: their scores mean nothing\n")
    if unknown:
        sys.stderr.write(
            f"warning: {unknown} of the texts hold nothing the tokenizer knows (every "
            "character outside its vocabulary): their scores mean nothing\n"
        )
    samples = LabeledTexts(encoded, seq, tok.pad_id, encoder=start is not None)
    logits = class_logits(model, samples, 32)
    # A multi-label classifier's labels each have a probability of their own.
    multi = stage.multi_label
    return labels, logits.sigmoid() if multi else logits.softmax(-1), multi


def run(args: argparse.Namespace) -> int:
    from llmbuild.cli.generate_cmd import _built
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    texts = _texts(args)
    resolved = load_spec(args.spec, args.overrides, missing_ok=True)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    node = _stage_node(resolved, args.stage)
    stage = _built(store, planned, node, args)
    labels, probs, multi = predict(stage, _built(store, planned, "tokenizer", args), texts)
    top = max(1, min(args.top, len(labels)))
    for (text, pair), row in zip(texts, probs.tolist()):
        ranked = sorted(zip(labels, row), key=lambda lp: -lp[1])
        # Multi-label: every label past 0.5 (perhaps none); else the most likely one.
        chosen = [n for n, p in ranked if p > 0.5] if multi else ranked[0][0]
        if args.json:
            out = {"text": text, **({"pair": pair} if pair is not None else {})}
            out |= {"labels" if multi else "label": chosen}
            out |= {"probabilities": dict(zip(labels, row))}
            sys.stdout.write(json.dumps(out) + "\n")
        else:
            shown = "  ".join(f"{name} {p:.3f}" for name, p in ranked[:top])
            said = (",".join(chosen) or "-") if multi else chosen
            sys.stdout.write(f"{said}\t{shown}\t{text}\n")
    return 0
