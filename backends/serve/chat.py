"""The terminal chat: reads a line, sends the whole conversation in the model's chat
template through the engine and prints the answer as its tokens come. ``/reset`` forgets
the conversation, ``/exit`` (or end of input) quits, Ctrl-C stops an answer."""

from __future__ import annotations

import queue
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from llmbuild.backends.serve.engine import Engine
from llmbuild.backends.serve.model import PromptError
from llmbuild.backends.serve.sequence import Event, SamplingParams

PROMPT = "> "


@dataclass(frozen=True)
class ChatOptions:
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    system: str | None = None
    """A system message opening every conversation."""


def _answer(engine: Engine, ids: list[int], params: SamplingParams, out: TextIO) -> str | None:
    """Streams one answer to ``out``; its text, or None when stopped or failed."""
    events: queue.Queue[Event] = queue.Queue()
    seq = engine.submit(ids, params, events.put)
    parts: list[str] = []
    try:
        while True:
            event = events.get()
            out.write(event.text)
            out.flush()
            parts.append(event.text)
            if event.finish_reason is not None:
                out.write("\n")
                if event.error is not None:
                    sys.stderr.write(f"error: {event.error}\n")
                    return None
                return "".join(parts)
    except KeyboardInterrupt:
        seq.cancel()
        out.write("\n(stopped)\n")
        return None


def chat(
    engine: Engine,
    options: ChatOptions,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> int:
    served = engine.served
    start = [{"role": "system", "content": options.system}] if options.system else []
    history = list(start)
    out.write(f"chatting with {served.name}: /reset forgets the conversation, /exit quits\n")
    while True:
        try:
            line = read(PROMPT)
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n(/exit or Ctrl-D quits)\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = list(start)
            out.write("(conversation forgotten)\n")
            continue
        if text.startswith("/"):
            out.write("commands: /reset, /exit\n")
            continue
        turn = [*history, {"role": "user", "content": line}]
        try:
            ids = served.chat_ids(turn)
        except PromptError as e:
            out.write(f"error: {e}\n")
            continue
        if len(ids) >= served.context:
            out.write(f"({_too_long(served, history, start, len(ids))})\n")
            continue
        params = SamplingParams(
            options.max_tokens,
            options.temperature,
            options.top_p,
            options.seed,
            stop=served.turn_texts,
        )
        answer = _answer(engine, ids, params, out)
        if answer is not None:
            history = [*turn, {"role": "assistant", "content": answer}]


def _too_long(
    served: Any, history: list[dict[str, str]], start: list[dict[str, str]], n: int
) -> str:
    """Why a turn cannot be answered: what of it fills the model's context, and what helps."""
    whole = f"{n} tokens with this message, and the model reads {served.context}"
    if history != start:  # earlier turns take room that /reset gives back
        return f"the conversation no longer fits: {whole}; /reset to start again"
    if start and len(served.chat_ids([*start, {"role": "user", "content": ""}])) >= served.context:
        return f"the system message alone does not fit: {whole}; chat with a shorter --system"
    return f"this message does not fit: {whole}; write a shorter one"
