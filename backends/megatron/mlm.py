"""Masked-LM pretraining of an encoder: BERT's masking and its objective.

Each sequence's masked positions depend only on the seed and the sequence's index, so a
resumed run masks exactly as the uninterrupted one, at any parallel layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from llmbuild.backends.megatron.objectives import (
    _dp_reduce,
    _my_chunks,
    full_vocab_logits,
    learned_tokens,
)


def word_continuations(pieces: list[str]) -> np.ndarray:
    """For each token id, whether it continues the word of the token before it when that
    token ends in a letter or digit: WordPiece's ``##`` pieces, and pieces that begin with
    a letter or digit and no space marker (characters of a word, BPE's inner pieces)."""
    out = np.zeros(len(pieces), dtype=bool)
    for i, piece in enumerate(pieces):
        if piece.startswith("##") or (piece and piece[0].isalnum()):
            out[i] = True
    return out


def word_ends(pieces: list[str]) -> np.ndarray:
    """For each token id, whether it ends in a letter or digit (a word may go on)."""
    return np.array([bool(p) and p[-1].isalnum() for p in pieces], dtype=bool)


class Masking:
    """BERT's rule: ``rate`` of the maskable tokens are chosen; of those 80% become the
    mask token, 10% a random token, 10% stay; the loss is on the chosen ones. With
    ``whole_words`` the choice is by words (every piece of a chosen word)."""

    def __init__(
        self,
        stage: dict[str, Any],
        mask_id: int,
        vocab: int,
        specials: set[int],
        seed: int,
        pieces: list[str] | None = None,
    ) -> None:
        self.rate, self.mask_id, self.vocab, self.seed = stage["mask_rate"], mask_id, vocab, seed
        self.split = (stage["mask_token_rate"], stage["random_token_rate"])
        self.specials = np.array(sorted(specials), dtype=np.int64)
        self.words = None
        if stage["whole_words"] and pieces is not None:
            self.words = (word_continuations(pieces), word_ends(pieces))

    def _groups(self, tokens: np.ndarray, maskable: np.ndarray) -> list[list[int]]:
        """Maskable positions grouped into words (each alone without ``whole_words``)."""
        positions = np.flatnonzero(maskable)
        if self.words is None:
            return [[int(p)] for p in positions]
        continues, ends = self.words
        groups: list[list[int]] = []
        for p in positions:
            p = int(p)
            joined = (
                groups and groups[-1][-1] == p - 1 and continues[tokens[p]] and ends[tokens[p - 1]]
            )
            if joined:
                groups[-1].append(p)
            else:
                groups.append([p])
        return groups

    def apply(self, tokens: np.ndarray, index: int, split: int) -> tuple[np.ndarray, np.ndarray]:
        """(input tokens, loss mask) of one sequence."""
        rng = np.random.default_rng([self.seed, split, index])
        maskable = ~np.isin(tokens, self.specials) & (tokens < self.vocab)
        groups = self._groups(tokens, maskable)
        target = max(1, round(self.rate * int(maskable.sum()))) if groups else 0
        chosen: list[int] = []
        for g in rng.permutation(len(groups)):
            if len(chosen) >= target:
                break
            chosen.extend(groups[g])
        out, mask = tokens.copy(), np.zeros(len(tokens), dtype=np.float32)
        if not chosen:
            return out, mask
        chosen_at = np.array(chosen)
        mask[chosen_at] = 1.0
        r = rng.random(len(chosen_at))
        masked, to_random = self.split
        out[chosen_at[r < masked]] = self.mask_id
        random_at = chosen_at[(r >= masked) & (r < masked + to_random)]
        out[random_at] = rng.integers(0, self.vocab, len(random_at))
        return out, mask


class MaskedSamples:
    """Sequences of a text split (``objectives.GptSamples``) with BERT's masks."""

    def __init__(self, samples: Any, masking: Masking, split: int) -> None:
        self.samples, self.masking, self.split = samples, masking, split

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        original = self.samples.batch(indices)["tokens"]
        rows = [
            self.masking.apply(original[r].numpy(), i, self.split) for r, i in enumerate(indices)
        ]
        return {
            "tokens": torch.from_numpy(np.stack([t for t, _ in rows])),
            "labels": original,
            "loss_mask": torch.from_numpy(np.stack([m for _, m in rows])),
            "position_ids": torch.arange(original.shape[1]).expand(len(indices), -1),
        }


def masked_loss(model: Any, batch: dict[str, Any], precision: str) -> tuple[Any, Any, Any]:
    """(mean cross-entropy, right predictions, count) over the masked positions."""
    logits = full_vocab_logits(model, batch, precision)
    mask = batch["loss_mask"].flatten()
    per_token = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
    count = batch.get("loss_norm", mask.sum().clamp(min=1))  # objectives.share_loss_norm
    right = ((logits.detach().argmax(-1).flatten() == batch["labels"].flatten()) * mask).sum()
    return (per_token * mask).sum() / count, right, count


class MaskedLM:
    """The masked-LM objective: cross-entropy on the masked tokens, and how many of them
    the model gets right (``accuracy``); validation adds the unigram baseline (always the
    training text's most frequent token)."""

    loss_count = staticmethod(learned_tokens)  # a mean over the masked tokens

    def __init__(self, train: MaskedSamples, valid: MaskedSamples | None, precision: str) -> None:
        self.train, self.valid, self.precision = train, valid, precision
        self.facts: dict[str, Any] = {}
        counts = np.bincount(
            train.samples.batch(list(range(min(256, len(train)))))["tokens"].flatten().numpy(),
            minlength=train.masking.vocab,
        )
        counts[train.masking.specials[train.masking.specials < len(counts)]] = 0
        self.most_frequent = int(counts.argmax())

    def batch(self, indices: list[int]) -> dict[str, Any]:
        return self.train.batch(indices)

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        loss, right, count = masked_loss(model, batch, self.precision)
        return loss, {"accuracy": float(right / count)}

    def evaluate(self, model: Any, samples: int, micro: int) -> dict[str, float]:
        if not self.valid:
            return {}
        sums = {"loss": 0.0, "right": 0.0, "count": 0.0, "unigram": 0.0}
        with torch.no_grad():
            for chunk in _my_chunks(samples, micro):
                batch = self.valid.batch(chunk)
                loss, right, count = masked_loss(model, batch, "fp32")
                mask = batch["loss_mask"].flatten()
                sums["loss"] += float(loss * count)
                sums["right"] += float(right)
                sums["count"] += float(count)
                sums["unigram"] += float(
                    ((batch["labels"].flatten() == self.most_frequent) * mask).sum()
                )
        total = _dp_reduce(sums, 1.0)
        count = max(total["count"], 1.0)
        self.facts["unigram_accuracy"] = total["unigram"] / count
        return {"val_loss": total["loss"] / count, "val_accuracy": total["right"] / count}
