"""Token sequences for each role: packed text, chats with the assistant's tokens marked,
preference pairs, and GRPO prompts. Special tokens (ChatML) are matched by the tokenizer."""

from __future__ import annotations

from typing import Any

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


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


class Encoder:
    """Batch encoding with a HF ``tokenizers`` tokenizer (Rust, multi-threaded)."""

    def __init__(self, tokenizer_json: str, eos_token: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_json)
        self.eos = self.tok.token_to_id(eos_token)
        if self.eos is None:
            raise ValueError(f"the tokenizer has no {eos_token!r} token")

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        # The fast variant skips character offsets, which nothing here needs.
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def chats(self, conversations: list[list[dict[str, str]]]) -> list[tuple[list[int], list[int]]]:
        """(tokens, loss mask) per conversation, ending with eos (not learned)."""
        segments = [chat_segments(c) for c in conversations]
        flat = self.encode([text for segs in segments for text, _ in segs])
        out, k = [], 0
        for segs in segments:
            ids: list[int] = []
            mask: list[int] = []
            for _, learn in segs:
                ids += flat[k]
                mask += [learn] * len(flat[k])
                k += 1
            out.append((ids + [self.eos], mask + [0]))
        return out

    def preferences(self, records: list[dict[str, Any]]) -> list[tuple[list[int], ...]]:
        """(prompt, chosen, rejected) token ids; answers end with <|im_end|> and eos."""
        flat = self.encode(
            [
                t
                for r in records
                for t in (prompt_text(r["prompt"]), r["chosen"] + IM_END, r["rejected"] + IM_END)
            ]
        )
        return [
            (flat[3 * i], flat[3 * i + 1] + [self.eos], flat[3 * i + 2] + [self.eos])
            for i in range(len(records))
        ]
