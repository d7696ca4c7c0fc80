"""``BuiltModel``: lm-eval's model interface over a built stage's megatron model, registered
with lm-eval as ``llmbuild`` (``--model llmbuild --model_args stage=DIR,tokenizer=DIR``).

Text is tokenized as in training: no special tokens, and documents follow an EOS (the
only separator the model has seen), so an empty context is scored after EOS. Windows
hold ``seq_len`` tokens; longer inputs keep their right end, as lm-eval's ``hf`` model
does. Generation is greedy and stops at EOS or the end of a chat turn, at a stop string
or after ``max_gen_toks``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

log = logging.getLogger(__name__)

Request = tuple[Any, list[int], list[int]]
"""What lm-eval hands ``_loglikelihood_tokens``: (its cache key, context ids, continuation
ids)."""


@register_model("llmbuild")
class BuiltModel(TemplateLM):
    """A built stage (its ``config.json`` and ``model.safetensors``) with its tokenizer
    node's directory."""

    def __init__(
        self,
        stage: str | Path,
        tokenizer: str | Path,
        batch_size: int | str = 8,
        max_gen_toks: int | str = 64,
        base: str | Path | None = None,
    ) -> None:
        super().__init__()
        from llmbuild.backends.megatron.generate import load_model
        from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

        self.model, config = load_model(Path(stage), Path(base) if base else None)
        self.vocab = config["vocab_size"]
        self.seq_len = config["architecture"]["seq_len"]
        self.tokenizer = TokenizerArtifact.open(tokenizer)
        self.tok = self.tokenizer.tokenizer
        self.eos_id = self.tokenizer.eos_id
        self.stop_ids = set(self.tokenizer.stop_ids)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self.eos_id

    @property
    def max_length(self) -> int:
        return self.seq_len

    @property
    def tokenizer_name(self) -> str:
        return "llmbuild"

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **_: Any
    ) -> list[int]:
        return self.tok.encode(string, add_special_tokens=False).ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def _raw(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def _logprobs(self, rows: list[list[int]]) -> Any:
        """Log-probabilities of the next token after every position of each row, over the
        real vocabulary (megatron pads it); rows are right-padded, which a causal model
        never sees."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        pos = torch.arange(width).unsqueeze(0).expand(len(rows), -1)
        with torch.no_grad():
            logits = self.model(ids, pos, None)[..., : self.vocab].float()
        return torch.log_softmax(logits, dim=-1)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        """lm-eval's own, without its "Tokenizing inputs" bar, which would break into the
        build's progress lines (the node reports its progress itself)."""
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        """Summed log-probability of each continuation after its context, and whether it
        is the greedy continuation; longest inputs first so batches pad little."""
        import torch

        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            rows, conts = [], []
            for i in batch:
                _, context, cont = requests[i]
                rows.append((context + cont)[-(self.seq_len + 1) :][:-1])
                conts.append(cont)
            logprobs = self._logprobs(rows)
            for i, row, cont, lp in zip(batch, rows, conts, logprobs):
                picked = lp[len(row) - len(cont) : len(row)]
                target = torch.tensor(cont)
                score = float(picked.gather(1, target.unsqueeze(1)).sum())
                out[i] = (score, bool((picked.argmax(-1) == target).all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of ``seq_len`` tokens that
        each see up to ``seq_len`` tokens before them."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for n, req in enumerate(requests):
            for window in get_rolling_token_windows(
                token_list=self.tok_encode(req.args[0]),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.seq_len,
                context_len=1,
            ):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[n] += score
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut before the first stop string."""
        out = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(n)
        for members in groups.values():
            until, limit = self._generation_settings(requests[members[0]].args[1])
            members.sort(key=lambda n: -len(requests[n].args[0]))
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                # an empty prompt starts a document, which follows an EOS
                prompts = [self.tok_encode(requests[n].args[0]) or [self.eos_id] for n in batch]
                for n, text in zip(batch, self._greedy(prompts, until, limit)):
                    out[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return out

    def _generation_settings(self, kwargs: dict[str, Any]) -> tuple[list[str], int]:
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0) > 0:
            log.warning("generation settings ask for sampling; this adapter decodes greedily")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        limit = kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", self.max_gen_toks))
        return [s for s in until if s], int(limit)

    def _greedy(self, prompts: list[list[int]], until: list[str], limit: int) -> list[str]:
        """Batched greedy decoding without a KV cache: each step reruns every unfinished
        row's last ``seq_len`` tokens, so an answer may run past the window (lm-eval's
        ``hf`` model instead cuts the prompt to leave room for ``max_gen_toks`` and
        refuses ``max_gen_toks >= seq_len``; both agree when prompt and answer fit)."""
        new: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))
        for _ in range(limit):
            if not live:
                break
            windows = [(prompts[i] + new[i])[-self.seq_len :] for i in live]
            logprobs = self._logprobs(windows)
            still = []
            for i, window, lp in zip(live, windows, logprobs):
                token = int(lp[len(window) - 1].argmax())
                if token in self.stop_ids:
                    continue
                new[i].append(token)
                if not any(s in self._raw(new[i]) for s in until):
                    still.append(i)
            live = still
        texts = []
        for ids in new:
            text = self._raw(ids)  # special tokens kept: a stop string may be one
            for stop in until:
                text = text.split(stop)[0]
            texts.append(text)
        return texts
