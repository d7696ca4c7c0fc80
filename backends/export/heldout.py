"""The held-out perplexity of an exported file beside the unquantized model's: the same
validation windows of the sources the export reads, scored by the file as its runtime
reads it (transformers' GGUF loader, onnxruntime) and by the float32 transformers model."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

BATCH = 8
"""Sequences per forward pass."""
FEW = 1000
"""Held-out tokens below which the ratio of two perplexities is mostly chance."""


def heldout_perplexity(
    ctx: Any, logits: Callable[[Any], Any], hf: Any, max_batches: int
) -> dict[str, Any]:
    """``logits(ids [batch, seq]) -> [batch, seq, vocab]`` is the file's model; ``{}`` (and a
    note) when the sources hold no validation data."""
    from llmbuild.backends.eval.run import _nll, heldout_windows

    windows: list[list[int]] = []
    masks: list[list[int]] | None = None  # plain text: every token counts
    sources = [slot[5:] for slot in sorted(ctx.inputs) if slot.startswith("data:")]
    for name in sources:  # a chat source's answers, as SFT's validation loss measures
        found, marks = heldout_windows(ctx.inputs[f"data:{name}"].path, hf.arch.seq_len, None)
        if not found:
            ctx.note(f"source {name!r} has no validation split: not measured")
        if marks is not None and masks is None:
            masks = [[1] * len(w) for w in windows]
        if masks is not None:
            masks += marks or [[1] * len(w) for w in found]
        windows += found
    windows = windows[: max_batches * BATCH]
    masks = None if masks is None else masks[: len(windows)]
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
    ours, n = _nll(lambda ids, pos, mask: logits(ids), windows, BATCH, masks)
    theirs, _ = _nll(lambda ids, pos, mask: hf.model(ids).logits, windows, BATCH, masks)
    ppl, reference = math.exp(ours / n), math.exp(theirs / n)
    if n < FEW:
        ctx.note(
            f"the held-out perplexity is measured over {n} tokens only: too few for its "
            "ratio to the unquantized model's to tell what the file loses from chance; "
            "name sources with more validation text in the export's `sources`"
        )
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
