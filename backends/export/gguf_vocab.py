"""The tokenizer as GGUF metadata (``tokenizer.ggml.*``), read from the tokenizer node's
``tokenizer.json``, in the forms llama.cpp's tokenizers understand:

- byte-level BPE (``bpe``, ``byte`` and byte-level pretrained tokenizers) -> ``gpt2`` with
  tokens, token types and merges;
- a char vocabulary of single-byte characters -> ``gpt2`` with no merges: each character
  is one byte, written in the byte-level alphabet, so byte-level BPE without merges
  tokenizes exactly as the char tokenizer does;
- unigram -> ``t5`` (llama.cpp's unigram tokenizer, UGM) with tokens, scores and token
  types, spaces as the Metaspace pre-tokenizer writes them;
- a sentencepiece BPE with byte fallback (Llama 2, Mistral) -> ``llama`` (llama.cpp's
  SPM tokenizer) with tokens, scores from the merges' ranks, token types and merges;
- anything else -> ``none``: the weights are usable, the runtime brings the tokenizer.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmbuild.backends.tokenizer.artifact import TokenizerArtifact
from llmbuild.backends.tokenizer.build import byte_alphabet


@dataclass(frozen=True)
class GgufVocab:
    """What goes under ``tokenizer.ggml``; ``tokens`` is empty for model ``none``."""

    model: str
    pre: str | None = None
    tokens: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    scores: list[float] | None = None
    merges: list[str] | None = None
    special: dict[str, int] = field(default_factory=dict)
    """``bos``, ``eos``, ``pad``, ``unk`` token ids (those the tokenizer has)."""
    chat_template: str | None = None
    add_space_prefix: bool | None = None
    add_bos: bool = False
    add_eos: bool = False
    """Whether a runtime starts (ends) a prompt with bos (eos): as the tokenizer itself
    encodes a text (a Llama or Mistral tokenizer's ``<s>``), as the hf export and
    ``generate`` do."""


def _parts(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A pre-tokenizer or decoder, or the members of a ``Sequence`` of them."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [*node.get("pretokenizers", []), *node.get("decoders", [])]
    return [node]


def _is_byte_level(tok: dict[str, Any]) -> bool:
    parts = _parts(tok.get("pre_tokenizer")) + _parts(tok.get("decoder"))
    return any(p.get("type") == "ByteLevel" for p in parts)


def _uses_gpt2_regex(tok: dict[str, Any]) -> bool:
    return any(
        p.get("type") == "ByteLevel" and p.get("use_regex", True)
        for p in _parts(tok.get("pre_tokenizer"))
    )


# The split regexes of published byte-level tokenizers (tokenizer.json's ``Split``
# pre-tokenizer), by the name under which llama.cpp reimplements each: a GGUF runtime
# splits text by ``tokenizer.ggml.pre``'s name, never by a regex of the file.
NAMED_SPLITS = {
    # Llama 3: numbers in runs of up to three digits
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    # Qwen 2 and later: each digit on its own
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def _pre_name(tok: dict[str, Any]) -> str:
    """``tokenizer.ggml.pre`` for a byte-level BPE: GPT-2's regex, a split llama.cpp knows
    by name, or ``default`` (llama.cpp's own split, which may differ: the export says so)."""
    if _uses_gpt2_regex(tok):
        return "gpt-2"
    splits = [
        (p.get("pattern") or {}).get("Regex")
        for p in _parts(tok.get("pre_tokenizer"))
        if p.get("type") == "Split"
    ]
    return NAMED_SPLITS.get(splits[0], "default") if len(splits) == 1 else "default"


def _chat_template(tokenizer_dir: Path) -> str | None:
    jinja = tokenizer_dir / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    config = tokenizer_dir / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.exists() else None
    return template if isinstance(template, str) else None


def _types(n: int, pieces: dict[int, str], added: dict[int, bool], unk: int | None) -> list[int]:
    from gguf import TokenType

    out = []
    for i in range(n):
        if i not in pieces:
            out.append(TokenType.UNUSED)
        elif i == unk:
            out.append(TokenType.UNKNOWN)
        elif i in added:
            out.append(TokenType.CONTROL if added[i] else TokenType.USER_DEFINED)
        else:
            out.append(TokenType.NORMAL)
    return [int(t) for t in out]


BYTE = 6  # gguf.TokenType.BYTE: a sentencepiece byte-fallback piece
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def _normalizers(tok: dict[str, Any]) -> list[dict[str, Any]]:
    node = tok.get("normalizer") or {}
    return node.get("normalizers", []) if node.get("type") == "Sequence" else [node]


def _is_sentencepiece(tok: dict[str, Any]) -> bool:
    """A sentencepiece BPE as transformers converts Llama 2's or Mistral's: spaces written
    "▁" (by a Metaspace pre-tokenizer, or the normaliser of older conversions), with byte
    fallback; llama.cpp's ``llama`` (SPM) tokenizer reads it from tokens and scores."""
    spaces = any(p.get("type") == "Metaspace" for p in _parts(tok.get("pre_tokenizer"))) or any(
        n.get("type") == "Replace" and n.get("content") == "▁" for n in _normalizers(tok)
    )
    return spaces and bool(tok["model"].get("byte_fallback"))


def _prepends_space(tok: dict[str, Any]) -> bool:
    """Whether a "▁" goes before a text, as sentencepiece's ``add_dummy_prefix`` does."""
    return any(
        p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never"
        for p in _parts(tok.get("pre_tokenizer"))
    ) or any(n.get("type") == "Prepend" and n.get("prepend") == "▁" for n in _normalizers(tok))


def _merge_scores(merges: list[str], tokens: list[str]) -> list[float]:
    """A sentencepiece BPE's scores: a piece made by an earlier merge scores higher
    (llama.cpp merges the pair whose piece scores highest, as BPE merges by rank); the
    pieces no merge makes (characters, bytes, special tokens) score below them all."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), r)
    low = -float(len(merges))
    return [-float(rank[t]) if t in rank else low for t in tokens]


def _merges(model: dict[str, Any]) -> list[str]:
    # tokenizers >= 0.20 writes merges as pairs; older files as "a b" strings
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _added_around(tokenizer: TokenizerArtifact, special: dict[str, int]) -> dict[str, bool]:
    """``add_bos`` and ``add_eos``: whether the tokenizer puts bos before (eos after) a
    text it encodes with its special tokens, as its post-processor says."""
    tok = tokenizer.tokenizer
    text = "a"
    own, plain = tok.encode(text).ids, tok.encode(text, add_special_tokens=False).ids
    bos, eos = special.get("bos"), special.get("eos")
    return {
        "add_bos": bos is not None and own[:1] == [bos] and plain[:1] != [bos],
        "add_eos": eos is not None and own[-1:] == [eos] and plain[-1:] != [eos],
    }


def _end_of_turn(info: Any, template: str | None) -> str | None:
    """The token a chat turn ends with: of the tokens that stop generation (eos, then the
    turn ends), the first the chat template writes (a Qwen's eos, ``<|im_end|>``; a Llama
    3's ``<|eot_id|>``), else the first turn end."""
    stops = [info.eos_token, *info.turn_ends]
    written = [t for t in stops if t and template and t in template]
    return written[0] if written else next(iter(info.turn_ends), None)


def gguf_vocab(tokenizer: TokenizerArtifact, vocab_size: int) -> GgufVocab:
    """The GGUF form of the tokenizer node's tokenizer, padded to ``vocab_size`` entries."""
    tok = json.loads(tokenizer.json_path.read_text())
    info = asdict(tokenizer.info)
    model = tok["model"]
    added = {t["id"]: bool(t.get("special")) for t in tok.get("added_tokens", [])}
    added_text = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    if model["type"] == "Unigram":
        pieces = {i: p for i, (p, _) in enumerate(model["vocab"])}
        scores_of = {i: float(s) for i, (_, s) in enumerate(model["vocab"])}
    else:
        pieces = {i: p for p, i in model.get("vocab", {}).items()}
        scores_of = {}
    pieces.update(added_text)
    ids = {p: i for i, p in pieces.items()}
    special = {
        k: ids[info[f"{k}_token"]] for k in ("bos", "eos", "pad") if info.get(f"{k}_token") in ids
    }
    unk = model.get("unk_id") if model["type"] == "Unigram" else ids.get(model.get("unk_token"))
    if unk is not None:
        special["unk"] = unk
    template = _chat_template(tokenizer.files)
    eot = _end_of_turn(tokenizer.info, template)
    if eot in ids:  # llama.cpp stops a chat reply at its end-of-turn token
        special["eot"] = ids[eot]
    common = {
        "special": special,
        "chat_template": template,
        **_added_around(tokenizer, special),
    }

    def listing(mapped: dict[int, str]) -> tuple[list[str], list[int]]:
        tokens = [mapped.get(i, f"[PAD{i}]") for i in range(vocab_size)]
        return tokens, _types(vocab_size, pieces, added, unk)

    if model["type"] == "BPE" and _is_byte_level(tok):
        tokens, types = listing(pieces)
        return GgufVocab("gpt2", _pre_name(tok), tokens, types, merges=_merges(model), **common)
    if model["type"] == "WordLevel" and all(
        len(p) == 1 and ord(p) < 128 for i, p in pieces.items() if i not in added
    ):
        alphabet = byte_alphabet()
        mapped = {i: p if i in added else alphabet[ord(p)] for i, p in pieces.items()}
        tokens, types = listing(mapped)
        return GgufVocab("gpt2", "default", tokens, types, merges=[], **common)
    if model["type"] == "BPE" and _is_sentencepiece(tok):
        tokens, types = listing(pieces)
        types = [BYTE if BYTE_PIECE.fullmatch(t) else k for t, k in zip(tokens, types, strict=True)]
        merges = _merges(model)
        return GgufVocab(
            "llama",
            None,
            tokens,
            types,
            _merge_scores(merges, tokens),
            merges=merges,
            add_space_prefix=_prepends_space(tok),
            **common,
        )
    if model["type"] == "Unigram":
        tokens, types = listing(pieces)
        scores = [scores_of.get(i, 0.0) for i in range(vocab_size)]
        prepend = any(
            p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never"
            for p in _parts(tok.get("pre_tokenizer"))
        )
        return GgufVocab("t5", None, tokens, types, scores, add_space_prefix=prepend, **common)
    return GgufVocab("none", **common)


def write_vocab(writer: Any, vocab: GgufVocab) -> None:
    """Add ``vocab`` to a ``gguf.GGUFWriter``'s metadata."""
    from gguf import GGUFValueType, Keys

    STRING = GGUFValueType.STRING
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    if vocab.tokens:
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        # not add_token_merges, which drops an empty list: llama.cpp refuses a gpt2-model
        # vocabulary without the key (the writer packs the empty array, see gguf_export)
        writer.add_key_value(Keys.Tokenizer.MERGES, vocab.merges, GGUFValueType.ARRAY, STRING)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
        writer.add_remove_extra_whitespaces(False)  # Metaspace keeps every space
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "pad": writer.add_pad_token_id,
        "unk": writer.add_unk_token_id,
        "eot": writer.add_eot_token_id,
    }
    for key, token_id in vocab.special.items():
        adders[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
