"""The text new tokens add after a prompt. A tokenizer's decoder reads a token by where it
stands: a sentencepiece or unigram model (Metaspace: Llama 2, Mistral, T5) drops the
space of the first token of a text (``"▁Paris"`` alone decodes as ``"Paris"``), and a
WordPiece model (BERT) puts one before every word but the first. Decoding the new tokens
alone would glue the answer to its prompt; they are decoded behind the prompt's last few
tokens instead, whose own text is then taken off."""

from __future__ import annotations

from collections.abc import Callable

CONTEXT = 4
"""Prompt tokens decoded before the new ones: enough for a decoder to see that a text
goes on (a word's pieces, a character's bytes)."""


class Continuation:
    """``text(new)``: what ``new`` adds after ``prompt`` as ``decode`` spells it."""

    def __init__(self, decode: Callable[[list[int]], str], prompt: list[int]) -> None:
        self.decode = decode
        self.before = list(prompt[-CONTEXT:])
        self.head = decode(self.before) if self.before else ""

    def text(self, new: list[int]) -> str:
        if not self.before:
            return self.decode(new)
        whole = self.decode(self.before + new)
        if whole.startswith(self.head):
            return whole[len(self.head) :]
        return self.decode(new)  # the prompt's tail reads otherwise with them: say them alone
