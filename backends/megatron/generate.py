"""Sampling from a trained stage's weights: greedy at temperature 0, else temperature with
optional top-k and top-p (nucleus) filtering."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def single_rank() -> None:
    """Set this process up as one rank of a one-rank model-parallel layout (for sampling,
    evals, exports and benchmarks outside a training group)."""
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    from llmbuild.run.ranks import join_single_rank_group

    apply_cpu_patches()
    from megatron.core import parallel_state

    join_single_rank_group()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def load_model(stage_dir: Path, base_dir: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The stage's GPTModel on this machine (one rank), in eval mode, and its config. A
    stage holding only LoRA adapters needs ``base_dir``, its base stage's artifact."""
    single_rank()
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.weights import load_stage

    from llmbuild.spec.model import Architecture

    config = json.loads((Path(stage_dir) / "config.json").read_text())
    arch = Architecture.model_validate(config["architecture"])
    model = build_model(arch, config["vocab_size"], transformer_config(arch))
    missing, unexpected = model.load_state_dict(load_stage(stage_dir, base_dir), strict=False)
    if unexpected or [m for m in missing if not m.endswith("_extra_state")]:
        raise RuntimeError(
            f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    model.eval()
    return model, config


def load_input(ctx: Any, slot: str = "model") -> tuple[Any, dict[str, Any]]:
    """``load_model`` of the stage a node reads as ``slot`` (its base found through it)."""
    from llmbuild.backends.megatron.artifact import StageArtifact

    return StageArtifact.open(ctx.input(slot)).load_model()


def context(config: dict[str, Any]) -> int:
    """The positions a stage's model reads: its position table or supported context (an
    imported model's, often longer than the seq_len it was fine-tuned at), as its ``hf``
    export and the server read it."""
    arch = config["architecture"]
    return int(arch.get("max_positions") or arch["seq_len"])


def sample(
    model: Any,
    config: dict[str, Any],
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int = 0,
    stop: int | Iterable[int] | None = None,
    progress: Callable[[int], None] | None = None,
    until: Callable[[list[int]], bool] | None = None,
) -> list[int]:
    """New token ids after the prompt, up to (not including) a ``stop`` token: the end
    of sequence, and for a chat model its end of turn (no KV cache: each step reruns the
    window); ``progress`` is told how many there are after each, and sampling ends too
    once ``until`` holds for them (an end-of-turn marker written out in text)."""
    import torch

    seq_len = context(config)
    vocab = config["vocab_size"]
    gen = torch.Generator().manual_seed(seed)
    stops = {stop} if isinstance(stop, int) else set(stop or ())
    ids = list(prompt_ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            window = torch.tensor([ids[-seq_len:]])
            pos = torch.arange(window.shape[1]).unsqueeze(0)
            logits = model(window, pos, None)[0, -1, :vocab].float()
            if temperature <= 0:
                nxt = int(torch.argmax(logits))
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, vocab)).values[-1]
                    logits[logits < kth] = float("-inf")
                probs = torch.softmax(logits, dim=-1)
                if top_p < 1.0:
                    sorted_p, order = torch.sort(probs, descending=True)
                    keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
                    keep[0] = True  # the most likely token always
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                    probs /= probs.sum()
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            if nxt in stops:
                break
            ids.append(nxt)
            out.append(nxt)
            if progress is not None:
                progress(len(out))
            if until is not None and until(out):
                break
    return out
