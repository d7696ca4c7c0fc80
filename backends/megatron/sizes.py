"""A model's size before it exists: its parameter count (the scaling fit reads it too)
and a lower bound on the memory one training rank needs, checked against the memory of
where it will run when a spec is validated. Pure Python: planning imports it."""

from __future__ import annotations

import numbers
import os
from typing import Any

GPU_MEMORY = 192 << 30
"""The most memory one accelerator has today: a rank needing more fits on none."""


def non_embedding_params(arch: Any) -> int:
    """Kaplan's N of an ``Architecture``: its weights without the embeddings."""
    counts = count_params(
        arch.layers, arch.hidden, arch.heads, arch.kv_heads, arch.ffn_hidden, 1, arch.seq_len,
        arch.activation == "swiglu", True, arch.position,
    )  # fmt: skip
    return int(counts["non_embedding_params"])


def count_params(
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    ffn_hidden: int,
    vocab: int,
    seq_len: int,
    gated: bool,
    tied: bool,
    position: str,
) -> dict[str, int]:
    """Weights of a decoder-only transformer, biases ignored.

    Per layer: attention q and o are hidden x hidden, k and v hidden x (kv_heads * head_dim)
    (grouped-query attention); the MLP is 3 matrices hidden x ffn_hidden when `gated`
    (SwiGLU) and 2 otherwise; two norm weights of size hidden. Plus a final norm. The
    embeddings are vocab x hidden, a second vocab x hidden output matrix when not `tied`,
    and a seq_len x hidden table when `position` is "learned" ("rope" has no weights).

    Returns "params" (N with embeddings), "non_embedding_params" (Kaplan's N) and the
    totals "attention", "mlp", "norms" and "embeddings".
    """
    sizes = {
        "layers": layers,
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "ffn_hidden": ffn_hidden,
        "vocab": vocab,
        "seq_len": seq_len,
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive integer (got {value!r})")
    layers, hidden, heads, kv_heads, ffn_hidden, vocab, seq_len = map(int, sizes.values())
    if hidden % heads:
        raise ValueError(f"heads ({heads}) must divide hidden ({hidden})")
    if heads % kv_heads:
        raise ValueError(f"kv_heads ({kv_heads}) must divide heads ({heads})")
    if position not in ("learned", "rope"):
        raise ValueError(f"position must be 'learned' or 'rope' (got {position!r})")
    kv_dim = kv_heads * (hidden // heads)
    attention = 2 * hidden * hidden + 2 * hidden * kv_dim
    mlp = (3 if gated else 2) * hidden * ffn_hidden
    norms = layers * 2 * hidden + hidden
    non_embedding = layers * (attention + mlp) + norms
    embeddings = vocab * hidden * (1 if tied else 2)
    if position == "learned":
        embeddings += seq_len * hidden
    return {
        "params": non_embedding + embeddings,
        "non_embedding_params": non_embedding,
        "attention": layers * attention,
        "mlp": layers * mlp,
        "norms": norms,
        "embeddings": embeddings,
    }


def _local_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def rank_memory(arch: Any, par: Any, vocab: int, micro_batch: int, precision: str) -> dict:
    """A lower bound on one rank's training memory, in bytes: its share of the weights and
    their gradients (the optimizer's state comes on top), and the activations of one micro
    batch kept for the backward pass (34 bytes per token and hidden unit per layer at 16
    bits, Korthikanti et al. 2022, without the attention scores a fused kernel never
    stores), split over tensor- and pipeline-parallel ranks."""
    counts = count_params(
        arch.layers, arch.hidden, arch.heads, arch.kv_heads or arch.heads,
        arch.ffn_hidden or 4 * arch.hidden, max(vocab, 1), arch.seq_len,
        arch.activation == "swiglu", arch.tie_embeddings, arch.position,
    )  # fmt: skip
    split = par.tensor * par.pipeline
    params = counts["params"] / split
    weights = params * (8 if precision == "fp32" else 6)  # fp32 w+g, or bf16 w + fp32 g
    per_layer = 34 * arch.seq_len * micro_batch * arch.hidden * (2 if precision == "fp32" else 1)
    activations = per_layer * arch.layers / split
    return {"params": counts["params"], "weights": weights, "activations": activations}


def memory_limit(par: Any) -> tuple[int, str, bool]:
    """The memory the ranks of this layout can have, what it is, and whether all ranks
    share it: this machine's when they run here on CPUs, else the largest accelerator's
    for each."""
    local = par.device == "cpu" or (
        par.device == "auto"
        and not os.environ.get("RAY_ADDRESS")
        and not os.path.exists("/proc/driver/nvidia")
    )
    memory = _local_memory()
    if local and memory:
        return memory, "this machine's memory", True
    return GPU_MEMORY, "the memory of the largest accelerator", False
