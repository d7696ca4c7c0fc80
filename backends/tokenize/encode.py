"""Token sequences for each role: packed text, chats with the assistant's tokens marked,
preference pairs, and GRPO prompts. Chats are written in the tokenizer's template:
ChatML for the tokenizers llmbuild builds unless the spec gives another, a pretrained
tokenizer's own template (Llama 3's headers, say), rendered by transformers. A document's
text, a labeled text, and in ChatML a message's content, a prompt and an answer, are plain
text: a special token's spelling in them (``<|im_end|>``, GPT-2's ``<|endoftext|>``) is
encoded as the characters it is, never as the control token; the template's own markers
are special tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

LONG = 1 << 18
"""Characters: a longer text is encoded in pieces of about this size, cut at spaces where
the tokenizer splits anyway (``tokenizers`` holds some 300 bytes a character while it
encodes one text: a 30 MB single-document source took 9 GB)."""
PROBE = (
    "The quick brown fox, aged 12, jumps over 3.5 lazy dogs! Über naïve café; "
    "don't stop — 東京 タワー. x+y=z (a) [b] {c} #tag @you it's 100% done..."
)
"""A text whose every cut must encode the same in two pieces as whole before a tokenizer's
texts are cut (a Llama 2 tokenizer's normaliser adds "▁" at the start of each piece: its
texts stay whole)."""


def chat_segments(messages: list[dict[str, str]]) -> list[tuple[str, int]]:
    """ChatML text of a conversation as (segment, 1 if the model learns it)."""
    out = []
    for m in messages:
        learn = int(m["role"] == "assistant")
        out += [(f"{IM_START}{m['role']}\n", 0), (m["content"], learn), (IM_END, learn), ("\n", 0)]
    return out


def prompt_text(prompt: str) -> str:
    """A user turn followed by the start of the assistant's answer."""
    return f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n"


class ChatML:
    """The ChatML template of the tokenizers llmbuild builds."""

    segments = staticmethod(chat_segments)

    @staticmethod
    def content(j: int) -> bool:
        """Whether segment ``j`` of ``segments`` is a message's content (each message is
        its header, content, end and newline)."""
        return j % 4 == 1

    @staticmethod
    def prompt_pieces(prompt: str | list[dict[str, str]]) -> list[tuple[str, bool]]:
        """``prompt`` as ``prompt_text`` writes it, in (text, plain) pieces; a
        conversation up to the answer turn by turn, then the answer's header."""
        if isinstance(prompt, list):
            turns = [
                piece
                for m in prompt
                for piece in (
                    (f"{IM_START}{m['role']}\n", False),
                    (m["content"], True),
                    (f"{IM_END}\n", False),
                )
            ]
            return [*turns, (f"{IM_START}assistant\n", False)]
        return [
            (f"{IM_START}user\n", False),
            (prompt, True),
            (f"{IM_END}\n{IM_START}assistant\n", False),
        ]

    @staticmethod
    def answer_pieces(prompt: Any, answer: str) -> list[tuple[str, bool]]:
        """An assistant answer and its end of turn, in (text, plain) pieces."""
        return [(answer, True), (IM_END, False)]


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


class OwnTemplate:
    """A pretrained tokenizer's own chat template, rendered by transformers. The learned
    part of an assistant turn is what rendering the turn adds after the template's
    generation prompt (its header), end-of-turn included."""

    def __init__(self, tokenizer_dir: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer_dir)

    def render(self, messages: list[dict[str, str]], generation: bool = False) -> str:
        return self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation
        )

    def segments(self, messages: list[dict[str, str]]) -> list[tuple[str, int]]:
        out, done = [], ""
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            head, full = self.render(messages[:k], True), self.render(messages[: k + 1])
            if not (head.startswith(done) and full.startswith(head)):
                raise ValueError(
                    "the tokenizer's chat template does not render a conversation as its "
                    "prefix followed by the next turn, so the assistant's tokens cannot be "
                    "told apart: set [tokenizer] chat_template"
                )
            said = m["content"].strip()[-32:]  # its end: a template may rework the start
            if said and said not in full[len(head) :]:
                raise ValueError(
                    "the tokenizer's chat template renders an assistant turn without its "
                    f"content (a turn ending {said!r} is rendered as "
                    f"{_shown(full[len(head) :])}), so there is no answer to learn: check "
                    "[tokenizer] chat_template"
                )
            out += [(head[len(done) :], 0), (full[len(head) :], 1)]
            done = full
        rest = self.render(messages)[len(done) :]
        return [*out, (rest, 0)] if rest else out

    @staticmethod
    def turns(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
        """A prompt as the conversation before the answer: a user's turn, or its own."""
        return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]

    def prompt(self, prompt: str | list[dict[str, str]]) -> str:
        return self.render(self.turns(prompt), generation=True)

    @staticmethod
    def content(j: int) -> bool:
        """A rendered turn holds its content and the template's markers at once."""
        return False

    def prompt_pieces(self, prompt: str | list[dict[str, str]]) -> list[tuple[str, bool]]:
        return [(self.prompt(prompt), False)]

    def answer_pieces(self, prompt: Any, answer: str) -> list[tuple[str, bool]]:
        messages = [*self.turns(prompt), {"role": "assistant", "content": answer}]
        learned = [text for text, learn in self.segments(messages) if learn]
        return [(learned[-1], False)]  # the answer's turn: a prompt may hold earlier ones


class Encoder:
    """Batch encoding with a HF ``tokenizers`` tokenizer (Rust, multi-threaded)."""

    def __init__(
        self,
        tokenizer_json: str,
        eos_token: str,
        own_template: bool = False,
        unk: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_json)
        self.plain = Tokenizer.from_file(tokenizer_json)
        self.plain.encode_special_tokens = True  # a special token's spelling is text here
        self.eos = self.tok.token_to_id(eos_token)
        if self.eos is None:
            raise ValueError(f"the tokenizer has no {eos_token!r} token")
        self.template: Any = (
            OwnTemplate(str(Path(tokenizer_json).parent)) if own_template else ChatML
        )
        self.unk = unk
        """The id text the vocabulary cannot spell becomes (``unknown_id``)."""
        self._cuttable: dict[bool, int] = {}

    @property
    def document_start(self) -> list[int]:
        """What a document starts with: the ids the tokenizer itself puts before a text
        and nothing after it (a Llama or Mistral tokenizer's ``<s>``, Llama 3's
        ``<|begin_of_text|>``), as it was pretrained on and as transformers encodes a
        prompt; none for a tokenizer that adds none, or adds ids after a text as well
        (BERT's ``[CLS] ... [SEP]``)."""
        own = self.tok.encode("a").ids
        plain = self.tok.encode("a", add_special_tokens=False).ids
        cut = len(own) - len(plain)
        return own[:cut] if cut > 0 and own[cut:] == plain else []

    def unknown(self, docs: list[list[int]]) -> int:
        """How many of ``docs``' tokens are the unknown token."""
        return 0 if self.unk is None else sum(ids.count(self.unk) for ids in docs)

    def encode(self, texts: list[str], plain: bool = False) -> list[list[int]]:
        """Token ids of each text; ``plain``: a special token's spelling in it is text."""
        if not texts:
            return []
        tok = self.plain if plain else self.tok
        if all(len(t) <= LONG for t in texts) or not self.cuttable(plain):
            return self._whole(texts, tok)
        short = self._whole([t if len(t) <= LONG else "" for t in texts], tok)
        anywhere = self.cuttable(plain) == 2
        return [
            self._long(t, tok, anywhere) if len(t) > LONG else ids
            for t, ids in zip(texts, short, strict=True)
        ]

    @staticmethod
    def _whole(texts: list[str], tok: Any) -> list[list[int]]:
        # The fast variant skips character offsets, which nothing here needs.
        return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]

    def cuttable(self, plain: bool) -> int:
        """Where a text may be cut into pieces that encode as the whole does, tried at each
        such place of PROBE: 2 anywhere (a char or byte tokenizer, reading a special
        token's spelling as text), 1 at a single space (pre-tokenisation splits there
        anyway), 0 nowhere."""
        if plain not in self._cuttable:
            tok = self.plain if plain else self.tok
            whole = self._whole([PROBE], tok)[0]

            def same(cuts: list[int]) -> bool:
                halves = self._whole([h for c in cuts for h in (PROBE[:c], PROBE[c:])], tok)
                return all(halves[2 * i] + halves[2 * i + 1] == whole for i in range(len(cuts)))

            spaces = same([i for i in range(len(PROBE)) if _cut_at(PROBE, i)])
            anywhere = plain and spaces and same(list(range(1, len(PROBE))))
            self._cuttable[plain] = 2 if anywhere else 1 if spaces else 0
        return self._cuttable[plain]

    def _long(self, text: str, tok: Any, anywhere: bool) -> list[int]:
        """A long text's ids, encoded piece by piece, each cut at the last single space
        within LONG characters; a stretch without one is cut at LONG characters where it
        may be cut ``anywhere``, else is one piece."""
        ids: list[int] = []
        start = 0
        while start < len(text):
            end = len(text)
            if end - start > LONG:
                end = _last_cut(text, start, start + LONG) or (
                    start + LONG if anywhere else _next_cut(text, start + LONG)
                )
            ids += self._whole([text[start:end]], tok)[0]
            start = end
        return ids

    def _pieces(self, pieces: list[tuple[str, bool]]) -> list[list[int]]:
        """The ids of each (text, plain) piece, the plain ones read as plain text."""
        flat: list[list[int]] = [[] for _ in pieces]
        for plain in (False, True):
            at = [i for i, (_, p) in enumerate(pieces) if p == plain]
            found = self.encode([pieces[i][0] for i in at], plain)
            for i, ids in zip(at, found, strict=True):
                flat[i] = ids
        return flat

    def split(self, seqs: list[list[tuple[str, bool]]]) -> list[list[list[int]]]:
        """The ids of each (text, plain) piece of each sequence, as the sequence encodes
        whole. Where pieces encode as their whole does (``cuttable``), each piece is
        encoded on its own, a plain one as plain text. Where they do not (a Llama 2 or
        Mistral tokenizer's normaliser puts "▁" before every text it reads, so a turn
        encoded alone would start with a stray "▁"), the sequence is encoded at once, as
        transformers encodes a rendered chat, and each token goes to the piece its first
        character is in."""
        from bisect import bisect_right
        from itertools import accumulate

        if self.cuttable(False):
            flat = self._pieces([p for seq in seqs for p in seq])
            out, k = [], 0
            for seq in seqs:
                out.append(flat[k : k + len(seq)])
                k += len(seq)
            return out
        texts = ["".join(text for text, _ in seq) for seq in seqs]
        found = self.tok.encode_batch(texts, add_special_tokens=False) if texts else []
        out = []
        for seq, enc in zip(seqs, found, strict=True):
            ends = list(accumulate(len(text) for text, _ in seq))
            per: list[list[int]] = [[] for _ in seq]
            for token, (start, _) in zip(enc.ids, enc.offsets, strict=True):
                per[min(bisect_right(ends, start), len(seq) - 1)].append(token)
            out.append(per)
        return out

    def sequences(self, pieces: list[list[tuple[str, bool]]]) -> list[list[int]]:
        """Each sequence of (text, plain) pieces as one list of ids."""
        return [[t for ids in per for t in ids] for per in self.split(pieces)]

    def prompts(self, prompts: list[str]) -> list[list[int]]:
        """Each prompt as a user's turn followed by the start of the answer."""
        return self.sequences([self.template.prompt_pieces(p) for p in prompts])

    def chats(self, conversations: list[list[dict[str, str]]]) -> list[tuple[list[int], list[int]]]:
        """(tokens, loss mask) per conversation, ending with eos (not learned; a template
        that writes one already ends there)."""
        segments = [self.template.segments(c) for c in conversations]
        per = self.split(
            [
                [(text, self.template.content(j)) for j, (text, _) in enumerate(segs)]
                for segs in segments
            ]
        )
        out = []
        for segs, pieces in zip(segments, per, strict=True):
            ids = [t for piece in pieces for t in piece]
            mask = [learn for (_, learn), piece in zip(segs, pieces, strict=True) for _ in piece]
            ended = self._ended(ids)
            out.append((ended, mask + [0] * (len(ended) - len(ids))))
        return out

    def preferences(self, records: list[dict[str, Any]]) -> list[tuple[list[int], ...]]:
        """(prompt, chosen, rejected) token ids; answers end with the template's end of
        turn and eos. Each answer is encoded after its prompt, as the pair reads."""
        seqs, cuts = [], []
        for r in records:
            prompt = self.template.prompt_pieces(r["prompt"])
            cuts.append(len(prompt))
            for answer in (r["chosen"], r["rejected"]):
                seqs.append(prompt + self.template.answer_pieces(r["prompt"], answer))
        per = self.split(seqs)

        def ids(pieces: list[list[int]]) -> list[int]:
            return [t for piece in pieces for t in piece]

        out = []
        for i, cut in enumerate(cuts):
            chosen, rejected = per[2 * i], per[2 * i + 1]
            answers = (self._ended(ids(chosen[cut:])), self._ended(ids(rejected[cut:])))
            out.append((ids(chosen[:cut]), *answers))
        return out

    def _ended(self, ids: list[int]) -> list[int]:
        """``ids`` ending with eos: appended, unless the template wrote one there."""
        return ids if ids[-1:] == [self.eos] else ids + [self.eos]


def unknown_id(tokenizer_json: Path) -> int | None:
    """The unknown token's id, from the tokenizer model's own setting: ``unk_token``
    (BPE, WordPiece, WordLevel) or ``unk_id`` (Unigram); None where there is none (a
    byte-level vocabulary spells everything)."""
    import json

    data = json.loads(tokenizer_json.read_text())
    model = data.get("model", {})
    if isinstance(model.get("unk_id"), int):
        return model["unk_id"]
    name = model.get("unk_token")
    vocab = model.get("vocab")
    if not isinstance(name, str):
        return None
    added = {t.get("content"): t.get("id") for t in data.get("added_tokens", [])}
    return added.get(name, vocab.get(name) if isinstance(vocab, dict) else None)


def _cut_at(text: str, i: int) -> bool:
    """Whether ``text`` may be cut before ``i``: a single space between two other
    characters (the piece after it starts with the space, as its word does in the whole)."""
    return (
        0 < i < len(text) - 1
        and text[i] == " "
        and not text[i - 1].isspace()
        and not text[i + 1].isspace()
    )


def _last_cut(text: str, lo: int, hi: int) -> int | None:
    """The last place in (lo, hi] the text may be cut."""
    i = text.rfind(" ", lo + 1, hi + 1)
    while i > lo and not _cut_at(text, i):
        i = text.rfind(" ", lo + 1, i)
    return i if i > lo else None


def _next_cut(text: str, lo: int) -> int:
    """The first place from ``lo`` on the text may be cut; its end if none."""
    i = text.find(" ", lo)
    while i != -1 and not _cut_at(text, i):
        i = text.find(" ", i + 1)
    return len(text) if i == -1 else i
