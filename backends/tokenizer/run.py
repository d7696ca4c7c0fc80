"""The ``tokenizer`` node: build the tokenizer and save a directory that
``transformers.AutoTokenizer`` loads, with the special tokens and chat template."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmbuild.backends.data.clean import record_text
from llmbuild.backends.data.shards import iter_split
from llmbuild.backends.tokenizer.artifact import FILES, TokenizerInfo
from llmbuild.backends.tokenizer.build import (
    CHATML,
    IM_END,
    IM_START,
    UNK,
    byte_tokenizer,
    char_tokenizer,
    special_tokens,
    trained_tokenizer,
)
from llmbuild.backends.tokenizer.config import TokenizerConfig

from llmbuild.errors import UserError

DIR = FILES


def _training_texts(ctx: Any) -> Iterator[str]:
    for slot in sorted(ctx.inputs):
        if slot.startswith("text:"):
            for record in iter_split(ctx.inputs[slot].path, "train"):
                yield record_text(record)


def _pretrained(path: str, out: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many kinds here
        raise UserError(f"cannot load a tokenizer from {path}: {e}") from None
    tok.save_pretrained(str(out))


def run(ctx: Any) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    spec = TokenizerConfig.model_validate(ctx.config).tokenizer
    out = ctx.out_dir / DIR
    if spec.kind == "pretrained":
        _pretrained(spec.path, out)
    else:
        from transformers import PreTrainedTokenizerFast

        specials = special_tokens(spec)
        if spec.kind == "char":
            tok = char_tokenizer(_training_texts(ctx), specials)
        elif spec.kind == "byte":
            tok = byte_tokenizer(specials)
        else:
            tok = trained_tokenizer(spec, _training_texts(ctx), specials)
        extra = [t for t in (IM_START, IM_END) if t in specials]
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=spec.bos_token,
            eos_token=spec.eos_token,
            pad_token=spec.pad_token,
            unk_token=UNK,
            additional_special_tokens=extra,
            clean_up_tokenization_spaces=False,
        )
        fast.chat_template = CHATML if spec.chat_template == "chatml" else spec.chat_template
        fast.save_pretrained(str(out))
    tok_json = json.loads((out / "tokenizer.json").read_text())
    vocab_size = (
        len(tok_json["model"]["vocab"])
        if isinstance(tok_json["model"].get("vocab"), dict)
        else len(tok_json["model"].get("vocab", []))
    )
    vocab_size = max(
        vocab_size, max((t["id"] for t in tok_json.get("added_tokens", [])), default=-1) + 1
    )
    TokenizerInfo(
        kind=spec.kind,
        vocab_size=vocab_size,
        eos_token=spec.eos_token,
        bos_token=spec.bos_token,
        pad_token=spec.pad_token,
        chat_template=spec.chat_template,
    ).write(ctx.out_dir)
    ctx.metrics["vocab_size"] = vocab_size
