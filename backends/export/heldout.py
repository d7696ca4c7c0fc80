"""The held-out perplexity of an exported file beside the unquantized model's: the same
validation windows of the sources the export reads, scored by the file as its runtime
reads it (transformers' GGUF loader, onnxruntime) and by the float32 transformers model."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

BATCH = 8
"""Sequences per forward pass."""


def heldout_perplexity(
    ctx: Any, logits: Callable[[Any], Any], hf: Any, max_batches: int
) -> dict[str, Any]:
    """``logits(ids [batch, seq]) -> [batch, seq, vocab]`` is the file's model; ``{}`` (and a
    note) when the sources hold no validation data."""
    from llmbuild.backends.eval.run import _nll, _validation_tokens, _windows

    tokens: list[int] = []
    sources = [slot[5:] for slot in sorted(ctx.inputs) if slot.startswith("data:")]
    for name in sources:
        found, _ = _validation_tokens(ctx.inputs[f"data:{name}"].path)  # the file's own
        if not found:
            ctx.note(f"source {name!r} has no validation split: not measured")
        tokens += found
    windows = _windows(tokens, hf.arch.seq_len, max_batches * BATCH)
    if not windows:
        read = (
            f"its sources ({', '.join(sources)}) hold no validation text"
            if sources
            else "it reads the spec's pretrain sources when `sources` is left out, and "
            "there are none"
        )
        ctx.note(
            f"the file's held-out perplexity is not measured: {read}; name sources with a "
            "validation split in the export's `sources` (a chat source's counts too)"
        )
        return {}
    ours, n = _nll(lambda ids, pos, mask: logits(ids), windows, BATCH)
    theirs, _ = _nll(lambda ids, pos, mask: hf.model(ids).logits, windows, BATCH)
    ppl, reference = math.exp(ours / n), math.exp(theirs / n)
    ctx.log.info(
        "held-out perplexity %.3f, unquantized %.3f (%.4fx) over %d tokens",
        ppl, reference, ppl / reference, n,
    )  # fmt: skip
    return {
        "heldout_tokens": n,
        "perplexity": ppl,
        "unquantized_perplexity": reference,
        "perplexity_ratio": ppl / reference,
    }
