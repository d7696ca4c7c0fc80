"""GRPO: for each prompt, sample a group of completions from the current policy, reward
them, normalise the rewards within the group into advantages, and take a clipped policy
gradient step with a KL penalty (``k3`` estimator) towards the frozen reference. Groups
whose rewards are all equal carry no advantage; by default they leave the policy loss's
mean rather than dilute it.

Sampling draws from generators seeded by the model seed and the sample's index, so every
tensor-parallel rank draws the same completions and a resumed run draws what the
uninterrupted one drew."""

from __future__ import annotations

from typing import Any

import torch
from llmbuild.backends.megatron.objectives import _dp_reduce, _my_chunks, token_losses
from llmbuild.backends.megatron.posttrain_data import answer_batch


def _seeded(seed: int, *parts: int) -> torch.Generator:
    from llmbuild.backends.megatron.shards import _name_seed

    return torch.Generator().manual_seed(_name_seed(seed, ":".join(map(str, parts))))


def full_logits(model: Any, tokens: Any, vocab: int) -> Any:
    """Logits of the last position over the real vocabulary, gathered across the
    tensor-parallel ranks."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    pos = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    logits = model(tokens, pos, None)[:, -1:, :]
    return gather_from_tensor_model_parallel_region(logits)[:, 0, :vocab].float()


def generate(
    model: Any,
    prompt: list[int],
    n: int,
    max_new: int,
    temperature: float,
    gen: torch.Generator,
    vocab: int,
    seq_len: int,
    stops: set[int],
) -> list[list[int]]:
    """``n`` completions of one prompt, each ending with its stop token when it stopped."""
    rows = [list(prompt) for _ in range(n)]  # equal lengths: finished rows keep going
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(max_new):
            if all(done):
                break
            window = torch.tensor([r[-seq_len:] for r in rows])
            logits = full_logits(model, window, vocab)
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            for k in range(n):
                rows[k].append(int(nxt[k]))
                if not done[k]:
                    out[k].append(int(nxt[k]))
                    done[k] = int(nxt[k]) in stops
    model.train(was_training)
    return out


def group_loss(
    policy: Any, kl: Any, informative: Any, kl_coef: float, uniform: str, norm: Any = None
) -> Any:
    """The step's loss from per-completion policy and KL terms. ``informative`` is 1 for
    a completion whose group's rewards differ: with ``uniform = "skip"`` the policy term
    averages over those completions only (a group of equal rewards has zero advantage
    and would only shrink the step), dividing by ``norm`` where given (the step's mean
    count of them per micro batch, ``share_loss_norm``) or else by this batch's count;
    with ``"keep"`` over all of them. The KL penalty always averages over every
    completion."""
    weights = informative if uniform == "skip" else torch.ones_like(informative)
    if norm is None or uniform != "skip":
        norm = weights.sum().clamp(min=1)
    return (policy * weights).sum() / norm + kl_coef * kl.mean()


class GroupPolicy:
    """The GRPO objective over a prompts-role source."""

    pipeline_ok = False

    def __init__(
        self,
        policy: Any,
        train: Any,
        valid: Any,
        reference: Any,
        rewards: Any,
        tokenizer: Any,
        stage: dict[str, Any],
        seq_len: int,
        vocab: int,
        stops: set[int],
        pad: int,
        seed: int,
    ) -> None:
        self.train, self.valid, self.reference, self.rewards = train, valid, reference, rewards
        self.tokenizer, self.stage, self.seq_len, self.vocab = tokenizer, stage, seq_len, vocab
        self.stops, self.pad, self.seed = stops, pad, seed
        self.policy = policy  # the model being trained, which samples each step's groups
        if stage["uniform_groups"] == "skip":  # a mean over the step's informative ones
            self.loss_count = self.informative_count

    def batch(self, indices: list[int]) -> dict[str, Any]:
        """Each prompt's group of completions, sampled from the current policy, and their
        rewards: all of a step's micro batches are sampled before its first update, so the
        step's count of informative completions is known to each micro batch's loss."""
        st = self.stage
        g = st["num_generations"]
        pairs, advantages, rewards, lengths, informative = [], [], [], [], []
        for i in indices:
            prompt, record = self.train[i]
            completions = generate(
                self.policy, prompt, g, st["max_new_tokens"], st["temperature"],
                _seeded(self.seed, i), self.vocab, self.seq_len, self.stops,
            )  # fmt: skip
            r = torch.tensor(self._score(prompt, record, completions))
            advantages.append((r - r.mean()) / (r.std() + 1e-4))
            rewards.append(r)
            informative.append(torch.full_like(r, float(r.max() > r.min())))
            pairs += [(prompt, c) for c in completions]
            lengths += [len(c) for c in completions]
        return {
            "sequences": answer_batch(pairs, self.seq_len, self.pad),
            "advantages": torch.cat(advantages).unsqueeze(1),
            "rewards": torch.cat(rewards),
            "informative": torch.cat(informative),
            "completion_tokens": sum(lengths) / len(lengths),
        }

    def informative_count(self, batch: dict[str, Any]) -> float:
        return float(batch["informative"].sum())

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t not in self.stops])

    def _score(
        self, prompt: list[int], record: dict[str, Any], completions: list[list[int]]
    ) -> list[float]:
        text = self.tokenizer.decode(prompt)
        return self.rewards(
            [text] * len(completions),
            [self._decode(c) for c in completions],
            [record] * len(completions),
            [(prompt, c) for c in completions],
        )

    def loss(self, model: Any, sampled: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        st = self.stage
        batch, adv = sampled["sequences"], sampled["advantages"]
        logp = -token_losses(model, batch, st["precision"])
        ref = -self.reference.token_losses(batch, st["precision"])
        # One update per sampled batch: the old policy is the current one (ratio = 1 in
        # value, its gradient the policy gradient); clipping bounds it all the same.
        ratio = torch.exp(logp - logp.detach())
        clipped = torch.clamp(ratio, 1 - st["clip"], 1 + st["clip"])
        policy = -torch.min(ratio * adv, clipped * adv)
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        mask = batch["loss_mask"]

        def per_sequence(values: Any) -> Any:  # the mean over each completion's tokens
            return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)

        kl_seq = per_sequence(kl)
        loss = group_loss(
            per_sequence(policy), kl_seq, sampled["informative"], st["kl_coef"],
            st["uniform_groups"], sampled.get("loss_norm"),
        )  # fmt: skip
        return loss, {
            "reward": float(sampled["rewards"].mean()),
            "kl": float(kl_seq.detach().mean()),
            "completion_tokens": sampled["completion_tokens"],
            "informative": float(sampled["informative"].mean()),
        }

    def evaluate(self, model: Any, samples: int, micro: int) -> dict[str, float]:
        """Mean reward of greedy completions of the validation prompts (none without)."""
        if not self.valid:
            return {}
        data = self.valid
        total, count = 0.0, 0
        for chunk in _my_chunks(min(samples, len(data)), micro):
            for i in chunk:
                prompt, record = data[i]
                completion = generate(
                    model, prompt, 1, self.stage["max_new_tokens"], 0.0,
                    _seeded(self.seed, i), self.vocab, self.seq_len, self.stops,
                )  # fmt: skip
                total += self._score(prompt, record, completion)[0]
                count += 1
        return {"val_reward": _dp_reduce({"reward": total}, count)["reward"]}
