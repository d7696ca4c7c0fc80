"""The ``tokenizer`` node: build the tokenizer and save a directory that
``transformers.AutoTokenizer`` loads, with the special tokens and chat template."""

from __future__ import annotations

import dataclasses
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


def _end_of_turn(path: Path, tok: Any) -> list[str]:
    """The tokens beyond eos that end generation: a checkpoint's ``generation_config.json``
    lists them (``eos_token_id``, e.g. Llama 3's ``<|eot_id|>``), and a ChatML template
    ends each turn with ``<|im_end|>``."""
    ends: list[str] = []
    config = path / "generation_config.json"
    if config.is_file():
        ids = json.loads(config.read_text()).get("eos_token_id")
        for i in ids if isinstance(ids, list) else [ids] if ids is not None else []:
            token = tok.convert_ids_to_tokens(int(i))
            if token is not None and token != tok.eos_token:
                ends.append(token)
    if IM_END in (tok.chat_template or "") and IM_END in tok.get_vocab():
        ends.append(IM_END)
    return list(dict.fromkeys(ends))


def _pretrained(spec: Any, out: Path, ctx: Any) -> TokenizerInfo:
    """A tokenizer directory as it is (its own special tokens and chat template; a
    template set in the spec replaces its own)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    except Exception as e:  # transformers raises many kinds here
        raise UserError(f"cannot load a tokenizer from {spec.path}: {e}") from None
    if not tok("The quick brown fox.", add_special_tokens=False)["input_ids"]:
        raise UserError(
            f"the tokenizer in {spec.path} turns text into no tokens (it has {len(tok)}): "
            "the directory lacks its vocabulary (tokenizer.json, tokenizer.model, vocab.json)"
        )
    # An encoder's tokenizer (BERT's) has [CLS] and [SEP] where a decoder's has bos and eos.
    bos = tok.bos_token or tok.cls_token
    eos = tok.eos_token or tok.sep_token
    if eos is None:
        raise UserError(
            f"the tokenizer in {spec.path} has no end-of-sequence token: a decoder's "
            "tokenizer names one (eos_token), an encoder's a separator (sep_token, BERT's "
            "[SEP], beside cls_token [CLS]); set it in its tokenizer_config.json or "
            "special_tokens_map.json"
        )
    if spec.chat_template is not None:
        own = getattr(tok, "chat_template", None)
        tok.chat_template = CHATML if spec.template == "chatml" else spec.template
        vocab = tok.get_vocab()
        if spec.template == "chatml" and not (IM_START in vocab and IM_END in vocab):
            # The embedding has no rows to spare for new tokens (a checkpoint's would not).
            instead = (
                "leave chat_template unset to keep the tokenizer's own template, or give"
                if own
                else "give"
            )
            ctx.note(
                f"the tokenizer in {spec.path} has no {IM_START} and {IM_END} tokens: "
                "chatml's markers become several ordinary tokens each (generate, serve "
                f"and chat end a reply where {IM_END} is written out); {instead} a Jinja "
                "template written with its special tokens"
            )
    tok.save_pretrained(str(out))
    return TokenizerInfo(
        kind=spec.kind,
        vocab_size=0,
        eos_token=eos,
        bos_token=bos,
        pad_token=tok.pad_token or eos,
        mask_token=tok.mask_token,
        chat_template="chatml" if tok.chat_template == CHATML else "own",
        end_of_turn=_end_of_turn(Path(spec.path), tok),
    )


def run(ctx: Any) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    config = TokenizerConfig.model_validate(ctx.config)
    spec = config.tokenizer
    out = ctx.out_dir / DIR
    if spec.kind == "pretrained":
        info = _pretrained(spec, out, ctx)
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
            **({"mask_token": spec.mask_token} if spec.mask_token else {}),
            additional_special_tokens=extra,
            clean_up_tokenization_spaces=False,
        )
        fast.chat_template = CHATML if spec.template == "chatml" else spec.template
        fast.save_pretrained(str(out))
        info = TokenizerInfo(
            kind=spec.kind,
            vocab_size=0,
            eos_token=spec.eos_token,
            bos_token=spec.bos_token,
            pad_token=spec.pad_token,
            mask_token=spec.mask_token,
            chat_template=spec.template,
        )
    tok_json = json.loads((out / "tokenizer.json").read_text())
    vocab_size = (
        len(tok_json["model"]["vocab"])
        if isinstance(tok_json["model"].get("vocab"), dict)
        else len(tok_json["model"].get("vocab", []))
    )
    vocab_size = max(
        vocab_size, max((t["id"] for t in tok_json.get("added_tokens", [])), default=-1) + 1
    )
    dataclasses.replace(info, vocab_size=vocab_size).write(ctx.out_dir)
    ctx.metrics["vocab_size"] = vocab_size
    asked = spec.vocab_size
    if asked is not None and vocab_size != asked:  # a trainer's vocabulary is what it can be
        why = (
            "the byte alphabet and special tokens alone take more"
            if vocab_size > asked
            else "the training text holds no more distinct pieces"
        )
        ctx.note(f"the tokenizer has {vocab_size} tokens, not vocab_size = {asked}: {why}")
