"""Tensor rules between our canonical weights (megatron-core names, tensor-parallel
gathered, one layout for every parallel layout) and a Hugging Face state dict, each rule
written once and applied in both directions: import reads with ``from_hf``, export writes
with ``to_hf``, so the two can never disagree.

Layout facts the rules encode (megatron-core's local layer spec): ``linear_qkv`` rows are
grouped per query group as ``[q x heads_per_group, k, v]`` blocks of ``head_dim`` rows
(and its bias alike), so a plain split of dim 0 gives each tensor-parallel rank whole
groups; ``linear_fc1`` of a gated MLP is ``[gate; up]``; megatron's rotary embedding is
not interleaved, like transformers' ``rotate_half``, so q and k need no permutation; the
embedding and output rows are padded to the vocabulary multiple (cut back on export)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Tensors = dict[str, Any]


@dataclass(frozen=True)
class Shapes:
    """What the rules need of an architecture."""

    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    """Rows that stand for tokens (cut to on export)."""
    padded_vocab: int
    """Rows of our embedding (padded to on import)."""

    @classmethod
    def of(cls, arch: Any, vocab: int, padded_vocab: int) -> Shapes:
        return cls(arch.heads, arch.kv_heads, arch.head_size, vocab, padded_vocab)


class Rule:
    """Our tensors ``ours`` <-> their tensors ``theirs`` (names may hold ``{i}``, the layer)."""

    ours: tuple[str, ...]
    theirs: tuple[str, ...]

    def to_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        raise NotImplementedError

    def from_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        raise NotImplementedError


class Same(Rule):
    """One tensor under two names."""

    def __init__(self, ours: str, theirs: str) -> None:
        self.ours, self.theirs = (ours,), (theirs,)

    def to_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        return tensors

    def from_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        return tensors


class Transposed(Same):
    """A linear stored transposed (GPT-2's Conv1D)."""

    def to_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        return [tensors[0].T]

    def from_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        return [tensors[0].T]


class VocabRows(Same):
    """An embedding or output matrix: padded rows here, the vocabulary's there."""

    def to_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        return [tensors[0][: s.vocab]]

    def from_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        import torch

        w = tensors[0]
        if w.shape[0] > s.padded_vocab:
            raise ValueError(f"{w.shape[0]} vocabulary rows do not fit {s.padded_vocab}")
        pad = torch.zeros(s.padded_vocab - w.shape[0], *w.shape[1:], dtype=w.dtype)
        return [torch.cat([w, pad])]


def split_qkv(w: Any, s: Shapes) -> tuple[Any, Any, Any]:
    """Grouped ``linear_qkv`` rows (weight or bias) -> (Q, K, V) in head order."""
    per = s.heads // s.kv_heads
    rest = w.shape[1:]
    blocks = w.reshape(s.kv_heads, per + 2, s.head_dim, *rest)
    q = blocks[:, :per].reshape(s.heads * s.head_dim, *rest)
    k = blocks[:, per].reshape(s.kv_heads * s.head_dim, *rest)
    v = blocks[:, per + 1].reshape(s.kv_heads * s.head_dim, *rest)
    return q, k, v


def join_qkv(q: Any, k: Any, v: Any, s: Shapes) -> Any:
    """(Q, K, V) in head order -> grouped ``linear_qkv`` rows."""
    import torch

    per = s.heads // s.kv_heads
    rest = q.shape[1:]
    qs = q.reshape(s.kv_heads, per, s.head_dim, *rest)
    ks = k.reshape(s.kv_heads, 1, s.head_dim, *rest)
    vs = v.reshape(s.kv_heads, 1, s.head_dim, *rest)
    return torch.cat([qs, ks, vs], dim=1).reshape(-1, *rest)


class Qkv(Rule):
    """The fused, grouped ``linear_qkv`` <-> separate q, k and v projections (weights or
    biases)."""

    def __init__(self, ours: str, q: str, k: str, v: str) -> None:
        self.ours, self.theirs = (ours,), (q, k, v)

    def to_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        return list(split_qkv(tensors[0], s))

    def from_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        return [join_qkv(*tensors, s)]


class FusedQkv(Rule):
    """The grouped ``linear_qkv`` <-> one ``[Q; K; V]`` matrix (GPT-2's ``c_attn``, stored
    transposed as a Conv1D when ``conv1d``)."""

    def __init__(self, ours: str, theirs: str, conv1d: bool) -> None:
        self.ours, self.theirs, self.conv1d = (ours,), (theirs,), conv1d

    def to_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        import torch

        w = torch.cat(split_qkv(tensors[0], s))
        return [w.T if self.conv1d and w.dim() == 2 else w]

    def from_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        w = tensors[0]
        w = w.T if self.conv1d and w.dim() == 2 else w
        q_rows, kv_rows = s.heads * s.head_dim, s.kv_heads * s.head_dim
        q, k, v = w[:q_rows], w[q_rows : q_rows + kv_rows], w[q_rows + kv_rows :]
        return [join_qkv(q, k, v, s)]


class GateUp(Rule):
    """A gated MLP's ``linear_fc1`` (``[gate; up]``) <-> its gate and up projections."""

    def __init__(self, ours: str, gate: str, up: str) -> None:
        self.ours, self.theirs = (ours,), (gate, up)

    def to_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        return list(tensors[0].chunk(2, dim=0))

    def from_hf(self, tensors: list[Any], s: Shapes) -> list[Any]:
        import torch

        return [torch.cat(tensors, dim=0)]


def expand(rules: list[Rule], layers: int) -> list[tuple[Rule, tuple[str, ...], tuple[str, ...]]]:
    """Each rule with its names, once per layer for names holding ``{i}``."""
    out = []
    for rule in rules:
        per_layer = any("{i}" in n for n in rule.ours + rule.theirs)
        for i in range(layers) if per_layer else [0]:
            ours = tuple(n.format(i=i) for n in rule.ours)
            theirs = tuple(n.format(i=i) for n in rule.theirs)
            out.append((rule, ours, theirs))
    return out


def to_hf(rules: list[Rule], layers: int, state: Tensors, s: Shapes) -> Tensors:
    """Our canonical weights -> theirs (every one of ours must be used)."""
    out: Tensors = {}
    used: set[str] = set()
    for rule, ours, theirs in expand(rules, layers):
        if not all(n in state for n in ours):
            continue
        used.update(ours)
        for name, t in zip(theirs, rule.to_hf([state[n] for n in ours], s), strict=True):
            out[name] = t.contiguous()
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"weights with no Hugging Face name: {left[:5]}")
    return out


class Converter:
    """Their tensors -> ours, fed in parts (one safetensors shard at a time): each rule
    runs once all of its tensors have arrived."""

    def __init__(self, rules: list[Rule], layers: int, s: Shapes) -> None:
        self.pending = expand(rules, layers)
        self.s = s
        self.waiting: Tensors = {}
        self.out: Tensors = {}
        self.known = {n for _, _, theirs in self.pending for n in theirs}

    def feed(self, tensors: Tensors) -> None:
        unknown = sorted(set(tensors) - self.known)
        if unknown:
            raise ValueError(f"tensors this family does not map: {unknown[:5]}")
        self.waiting.update(tensors)
        still = []
        for rule, ours, theirs in self.pending:
            if all(n in self.waiting for n in theirs):
                parts = [self.waiting.pop(n) for n in theirs]
                for name, t in zip(ours, rule.from_hf(parts, self.s), strict=True):
                    self.out[name] = t.contiguous()
            else:
                still.append((rule, ours, theirs))
        self.pending = still

    def result(self, optional: set[str] = frozenset()) -> Tensors:  # type: ignore[assignment]
        """Our weights; their tensors a rule still waits for are missing (``optional``
        names of ours may be absent, e.g. a tied output layer)."""
        missing = [
            t
            for _, ours, theirs in self.pending
            if not set(ours) <= optional
            for t in theirs
            if t not in self.waiting  # a rule's other tensors did arrive
        ]
        if missing:
            raise ValueError(f"the checkpoint lacks tensors: {missing[:5]}")
        return self.out
