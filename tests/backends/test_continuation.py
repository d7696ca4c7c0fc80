"""The text generated tokens add after a prompt, whatever the tokenizer's decoder does
with a text's first token (``backends/tokenizer/continuation.py``): what `generate`,
a samples eval and `serve` show."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmbuild.backends.tokenizer.continuation import Continuation

from llmbuild.spec.model import Tokenizer as TokenizerSpec

TEXT = (Path(__file__).parents[2] / "examples/shakespeare/data/tinyshakespeare.txt").read_text()[
    :20000
]


def _llama2_style():
    """Llama 2's and Mistral's sentencepiece model as transformers converts it: words
    with "▁" for their space, one before the text too, and a decoder that strips that
    first space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"]))
    return tok


def _wordpiece():
    """BERT's: a space before every word but the first, "##" joining a word's pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        [TEXT], trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[UNK]"])
    )
    return tok


def _ours(kind):
    from llmbuild.backends.tokenizer.build import special_tokens, trained_tokenizer

    spec = TokenizerSpec(kind=kind, vocab_size=400)
    return trained_tokenizer(spec, [TEXT], special_tokens(spec))


@pytest.mark.parametrize("kind", ["unigram", "llama2", "wordpiece", "bpe"])
def test_new_tokens_read_as_they_do_after_their_prompt(kind):
    tok = {"llama2": _llama2_style, "wordpiece": _wordpiece}.get(kind, lambda: _ours(kind))()
    ids = tok.encode("ROMEO: What say you to the king of England?", add_special_tokens=False).ids

    def decode(x):
        return tok.decode(x, skip_special_tokens=False)

    whole = decode(ids)
    # the prompt ends before a word: the answer's first token begins with its space
    cut = next(c for c in range(3, len(ids)) if whole[len(decode(ids[:c]))] == " ")
    shown = decode(ids[:cut]) + Continuation(decode, ids[:cut]).text(ids[cut:])
    assert shown == whole
    if kind != "bpe":  # a byte-level decoder reads each token alike; these do not
        assert decode(ids[:cut]) + decode(ids[cut:]) != decode(ids)
    assert Continuation(decode, []).text(ids) == decode(ids)  # no prompt: the text itself


def test_a_streamed_answer_keeps_its_first_space():
    """serve: a completion's text after a sentencepiece prompt starts with its space,
    streamed and whole (as OpenAI's completions API returns it)."""
    from llmbuild.backends.serve.sequence import SamplingParams, Sequence

    tok = _ours("unigram")
    prompt = tok.encode("ROMEO:", add_special_tokens=False).ids
    answer = tok.encode("ROMEO: the king", add_special_tokens=False).ids[len(prompt) :]
    events = []
    seq = Sequence(0, prompt, SamplingParams(max_tokens=len(answer)), events.append, (), tok.decode)
    assert [seq.accept(t) for t in answer][-1]
    assert seq.answer == " the king" == "".join(e.text for e in events)
