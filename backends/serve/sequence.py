"""One request inside the engine: how it samples (greedy at temperature 0, else seeded
temperature and top-p), the tokens and text it has produced, where it stops (a stop
token, a stop string, its token budget) and the events it sends its client."""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmbuild.backends.tokenizer.continuation import Continuation

log = logging.getLogger("llmbuild.serve")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    """New tokens at most (the engine caps it to what fits in the context)."""
    temperature: float = 0.0
    """0 is greedy."""
    top_p: float = 1.0
    seed: int | None = None
    """The sampling seed; a random one when None."""
    stop: tuple[str, ...] = ()
    """Strings that end the answer; they are not part of it."""


@dataclass(frozen=True)
class Event:
    """What a request's client receives: new text, and at the end why it ended."""

    text: str
    finish_reason: str | None = None
    """``stop``, ``length``, ``cancelled`` or ``error``; None until the last event."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


Sink = Callable[[Event], None]
"""Called on the engine's thread; it must not block."""


def sample(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """A token drawn from ``softmax(logits / temperature)``, restricted to the smallest set
    of most likely tokens whose probability reaches ``top_p``."""
    import torch

    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = (sorted_p.cumsum(0) - sorted_p) < top_p
        keep[0] = True  # the most likely token always (a top_p below float32's least too)
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _held_prefix(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could begin a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class Sequence:
    """A request's state while the engine decodes it."""

    def __init__(
        self,
        rid: int,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Sink,
        stop_ids: tuple[int, ...],
        decode: Callable[[list[int]], str],
    ) -> None:
        self.rid, self.prompt_ids, self.params, self.sink = rid, prompt_ids, params, sink
        self.stop_ids = frozenset(stop_ids)
        self.answer_text = Continuation(decode, prompt_ids).text
        """The text of the answer's ids, as they read after the prompt."""
        self.ids: list[int] = []
        self.sent = 0
        """Characters of the text already sent."""
        self.finish_reason: str | None = None
        self.answer = ""
        """The whole answer, once finished."""
        self._cancelled = threading.Event()
        self.generator = None
        if params.temperature > 0:
            import torch

            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator().manual_seed(seed)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop decoding it (its client is gone): the engine frees its row at the next
        step."""
        self._cancelled.set()

    @property
    def last(self) -> int:
        return self.ids[-1]

    def pick(self, logits: Any, greedy_choice: int) -> int:
        if self.generator is None:
            return greedy_choice
        return sample(logits.float(), self.params.temperature, self.params.top_p, self.generator)

    def accept(self, token: int) -> bool:
        """Takes the next token; sends the text it completes; True once it is finished."""
        if token in self.stop_ids:
            return self.finish("stop", self.answer_text(self.ids))
        self.ids.append(token)
        text = self.answer_text(self.ids)
        for stop in self.params.stop:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                return self.finish("stop", text[:at])
        if len(self.ids) >= self.params.max_tokens:
            # cut inside a character: its bytes so far decode to U+FFFD, which is no text
            return self.finish("length", text.rstrip("\ufffd"))
        if text.endswith("\ufffd"):  # a character whose bytes are not all decoded yet
            return False
        end = len(text) - _held_prefix(text, self.params.stop)
        if end > self.sent:
            self.send(Event(text[self.sent : end]))
            self.sent = end
        return False

    def finish(self, reason: str, text: str = "", error: str | None = None) -> bool:
        if self.finish_reason is None:
            self.finish_reason, self.answer = reason, text
            log.info("request %d ended (%s) after %d tokens", self.rid, reason, len(self.ids))
            if log.isEnabledFor(logging.DEBUG):  # before the client hears of the end
                log.debug("request %d answer %s", self.rid, json.dumps(text))
            self.send(
                Event(
                    text[self.sent :],
                    reason,
                    prompt_tokens=len(self.prompt_ids),
                    completion_tokens=len(self.ids),
                    error=error,
                )
            )
            self.sent = max(self.sent, len(text))
        return True

    def send(self, event: Event) -> None:
        try:
            self.sink(event)
        except RuntimeError:  # the client's event loop is closed: nobody is listening
            self.cancel()
