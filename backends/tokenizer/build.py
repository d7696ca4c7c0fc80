"""Building tokenizers with HF ``tokenizers``: char and byte vocabularies, trained BPE and
unigram models, and pretrained ones loaded from a local directory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmbuild.errors import UserError
from llmbuild.spec.model import Tokenizer as TokenizerSpec

IM_START, IM_END, UNK = "<|im_start|>", "<|im_end|>", "<|unk|>"


def text_turn_ends(template: str | None, vocab: Any) -> tuple[str, ...]:
    """A chat template's end-of-turn marker where the tokenizer has no token for it (a
    ChatML template over GPT-2's vocabulary): the model writes it out as ordinary tokens,
    so generation stops where its text appears, as it would at the token."""
    return (IM_END,) if IM_END in (template or "") and IM_END not in vocab else ()


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def special_tokens(spec: TokenizerSpec) -> list[str]:
    tokens = [spec.bos_token, spec.eos_token, spec.pad_token, UNK]
    if spec.template == "chatml":
        tokens += [IM_START, IM_END]
    if spec.mask_token is not None:
        tokens.append(spec.mask_token)
    return list(dict.fromkeys(tokens))


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes 0..255, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = 0
    out = []
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def char_tokenizer(texts: Iterable[str], specials: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def byte_tokenizer(specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in byte_alphabet():
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def trained_tokenizer(spec: TokenizerSpec, texts: Iterable[str], specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if spec.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size,
            min_frequency=spec.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=spec.vocab_size, special_tokens=specials, unk_token=UNK, show_progress=False
        )
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    except Exception as e:  # the trainer says why in its own words
        if "not large enough to contain all chars" in str(e):
            raise UserError(
                f"tokenizer.vocab_size = {spec.vocab_size} is too small for a unigram "
                "vocabulary: it must hold every character of the training text and the "
                "special tokens; raise it"
            ) from None
        raise
    return tok
