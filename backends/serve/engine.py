"""The batched generator: one thread decoding every running request together, a token
per request per forward pass, over a shared KV cache (continuous batching).

Between two decode steps it retires the requests that are cancelled (their client went
away) and admits those waiting, up to ``max_batch`` rows: their prompts are prefilled as
one left-padded batch and their rows joined to the running ones. A request leaves the
batch the step it ends (a stop token, a stop string, its token budget) and the others
go on. When idle, the first arrival waits ``gather_s`` for others to share its prefill.

Logging (logger ``llmbuild.serve``): one line per request admitted and finished; at
DEBUG the text of each prompt and answer, JSON-quoted."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from typing import Any

from llmbuild.backends.serve.batch import Batch
from llmbuild.backends.serve.model import ServedModel
from llmbuild.backends.serve.sequence import SamplingParams, Sequence, Sink

log = logging.getLogger("llmbuild.serve")


class Engine:
    def __init__(self, served: ServedModel, max_batch: int = 16, gather_s: float = 0.005):
        self.served, self.max_batch, self.gather_s = served, max_batch, gather_s
        self._batch = Batch(served.model, pad_id=served.start_id)
        self._rows: list[Sequence] = []
        self._waiting: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counts = {"finished": 0, "cancelled": 0, "steps": 0}

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="llmbuild-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Sink) -> Sequence:
        """Queues a request; ``sink`` gets its events on the engine's thread. The caller
        checks that the prompt fits (``prompt_ids`` shorter than the context)."""
        room = self.served.context - len(prompt_ids)
        if room <= 0:
            raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room to answer")
        if params.max_tokens > room:
            params = SamplingParams(**{**vars(params), "max_tokens": room})
        seq = Sequence(
            next(self._ids), prompt_ids, params, sink, self.served.stop_ids, self.served.decode
        )
        with self._wake:
            self._waiting.append(seq)
            self._wake.notify()
        return seq

    def status(self) -> dict[str, int]:
        return {"running": len(self._rows), "waiting": len(self._waiting), **self.counts}

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            self._warm_up()
            while True:
                joining = self._take()
                if joining is None:
                    return
                try:
                    self._retire([i for i, s in enumerate(self._rows) if not s.cancelled])
                    if joining:
                        self._admit(joining)
                    if self._rows:
                        self._decode()
                except Exception as e:  # a failed step fails the requests in it, not the server
                    log.exception("the engine's step failed")
                    for seq in self._rows + joining:
                        seq.finish("error", error=f"generation failed: {e}")
                    self._rows = []
                    self._batch.clear()

    def _warm_up(self) -> None:
        """Runs each kind of pass once (padded prefill, join, step, leave) before any
        request: a process's first passes pay for lazy setup in torch and transformers
        (up to ~100 ms measured here), which the first client should not wait for."""
        start = self.served.start_id
        self._batch.prefill([[start]])
        self._batch.prefill([[start], [start] * 3])
        self._batch.step([start] * 3)
        self._batch.keep([1])
        self._batch.clear()

    def _take(self) -> list[Sequence] | None:
        """The requests to admit now (waiting while there is nothing to do); None once
        stopping."""
        with self._wake:
            while not (self._waiting or self._rows or self._stopping):
                self._wake.wait()
            if self._stopping:
                for seq in [*self._rows, *self._waiting]:
                    seq.finish("error", error="the server is stopping")
                self._waiting.clear()
                return None
            if not self._rows:  # let requests that arrive together share a prefill
                deadline = time.monotonic() + self.gather_s
                while len(self._waiting) < self.max_batch and time.monotonic() < deadline:
                    self._wake.wait(deadline - time.monotonic())
            joining = []
            while self._waiting and len(self._rows) + len(joining) < self.max_batch:
                seq = self._waiting.popleft()
                if seq.cancelled:
                    self._count_cancelled(seq)
                else:
                    joining.append(seq)
            return joining

    def _count_cancelled(self, seq: Sequence) -> None:
        self.counts["cancelled"] += 1
        seq.finish("cancelled", seq.answer_text(seq.ids))

    def _admit(self, joining: list[Sequence]) -> None:
        for seq in joining:
            log.info(
                "request %d: %d prompt tokens, up to %d new; joins %d running",
                seq.rid,
                len(seq.prompt_ids),
                seq.params.max_tokens,
                len(self._rows),
            )
            if log.isEnabledFor(logging.DEBUG):
                text = self.served.decode(seq.prompt_ids, skip_special_tokens=False)
                log.debug("request %d prompt %s", seq.rid, json.dumps(text))
        logits = self._batch.prefill([seq.prompt_ids for seq in joining])
        self._rows += joining
        self._advance(logits, start=len(self._rows) - len(joining))

    def _decode(self) -> None:
        logits = self._batch.step([seq.last for seq in self._rows])
        self.counts["steps"] += 1
        self._advance(logits, start=0)

    def _advance(self, logits: Any, start: int) -> None:
        """Picks the next token of rows ``start:`` from their logits; retires those that
        end."""
        greedy = logits.argmax(dim=-1).tolist()
        alive = list(range(start))
        for i, seq in enumerate(self._rows[start:]):
            if seq.accept(seq.pick(logits[i], greedy[i])):
                self.counts["finished"] += 1
            else:
                alive.append(start + i)
        self._retire(alive)

    def _retire(self, alive: list[int]) -> None:
        """Keeps rows ``alive``; the cancelled among the others are finished as such."""
        if len(alive) == len(self._rows):
            return
        kept = set(alive)
        for i, seq in enumerate(self._rows):
            if i not in kept and seq.finish_reason is None:
                self._count_cancelled(seq)
        self._batch.keep(alive)
        self._rows = [self._rows[i] for i in alive]
