"""What a training stage optimises, per kind: next-token loss (pretrain, sft, lora), a
student's loss against a frozen teacher (distill), the DPO preference loss against a
frozen reference, the pairwise loss of a scalar-head reward model, a classifier's
cross-entropy, and GRPO's clipped policy loss over sampled groups with a KL penalty.

Each objective gives the loop the loss of one micro batch (plus metrics to average) and a
validation measurement; data order depends only on the step, so resumes are exact."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def autocast(precision: str) -> Any:
    """bf16 compute over fp32 master weights (autocast); fp32 runs as is."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


def masked_mean(per_token: Any, batch: dict[str, Any]) -> Any:
    """The batch's summed loss over its learned tokens, divided by its ``loss_norm``
    (``share_loss_norm``) or else by its own count of them."""
    mask = batch["loss_mask"]
    norm = batch.get("loss_norm")
    return (per_token.float() * mask).sum() / (mask.sum().clamp(min=1) if norm is None else norm)


def learned_tokens(batch: dict[str, Any]) -> float:
    """What a token-mean loss divides by: the batch's count of learned tokens."""
    return float(batch["loss_mask"].sum())


def share_loss_norm(batches: list[dict[str, Any]], count: Any = learned_tokens) -> None:
    """Give each batch, as ``loss_norm``, the mean of ``count(batch)`` per batch over all
    of ``batches`` on every data-parallel rank: for a loss that is a weighted mean (a mean
    over learned tokens, a class-weighted mean, a mean over informative completions),
    ``count`` is the batch's total weight. The mean of the batches' losses is then the
    weighted mean over them all, each token or text weighing the same whatever the micro
    batch size or the number of replicas (a chat's answers differ in length; a loss
    averaged per micro batch would weigh a short answer's tokens more, by a factor the
    layout sets). With equal counts, pretraining's, it is each batch's own count.

    Every data-parallel rank calls it alike (with no batches too): it all-reduces."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    counts = torch.tensor(
        [sum(float(count(b)) for b in batches), float(len(batches))], dtype=torch.float64
    )
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(counts, group=parallel_state.get_data_parallel_group())
    norm = max(float(counts[0]), 1.0) / max(float(counts[1]), 1.0)
    for b in batches:  # in the dtype the batch's own count would have had
        mask = b.get("loss_mask")
        floating = mask is not None and mask.is_floating_point()
        b["loss_norm"] = torch.tensor(norm, dtype=mask.dtype if floating else torch.float32)


def token_losses(model: Any, batch: dict[str, Any], precision: str = "fp32") -> Any:
    """Per-token cross-entropy ``[b, s]`` (the negative log-probability of each label)."""
    from megatron.core import parallel_state

    mask = batch.get("attention_mask")
    with autocast(precision):
        if parallel_state.get_tensor_model_parallel_world_size() == 1:
            # Whole logits: one fused cross-entropy instead of the vocab-parallel one.
            logits = model(batch["tokens"], batch["position_ids"], mask)
            per_token = F.cross_entropy(
                logits.float().flatten(0, 1), batch["labels"].flatten(), reduction="none"
            )
            return per_token.view_as(batch["labels"])
        return model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"]).float()


def _dp_reduce(values: dict[str, float], count: float) -> dict[str, float]:
    """Sums over data-parallel ranks divided by the summed count."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys] + [count], dtype=torch.float64)
    dist.all_reduce(t, group=parallel_state.get_data_parallel_group())
    return {k: float(t[i] / max(float(t[-1]), 1.0)) for i, k in enumerate(keys)}


def _my_chunks(samples: int, micro: int) -> list[list[int]]:
    """The validation chunks of this data-parallel rank: the same set whatever the layout."""
    from megatron.core import parallel_state

    rank = parallel_state.get_data_parallel_rank()
    size = parallel_state.get_data_parallel_world_size()
    chunks = [list(range(i, min(i + micro, samples))) for i in range(0, samples, micro)]
    return chunks[rank::size]


class GptSamples:
    """megatron-core's GPTDataset behind the ``batch(indices)`` interface."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        from .data import sample_batch

        return sample_batch(self.dataset, indices)


class LanguageModel:
    """Next-token loss on the marked tokens: all of them in pretraining, the assistant's
    in supervised fine-tuning. Works at every layout, pipeline included."""

    pipeline_ok = True
    loss_count = staticmethod(learned_tokens)  # a mean over learned tokens

    def __init__(self, train: Any, valid: Any, precision: str, seq_len: int) -> None:
        self.train, self.valid, self.precision, self.seq_len = train, valid, precision, seq_len

    def batch(self, indices: list[int]) -> dict[str, Any]:
        return self.train.batch(indices)

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        return masked_mean(token_losses(model, batch, self.precision), batch), {}

    def evaluate(self, model: Any, samples: int, micro: int) -> dict[str, float]:
        """Mean validation loss over the first ``samples`` sequences, chunked into micro
        batches dealt out to data-parallel ranks (tensor- and pipeline-parallel ranks of
        one replica see the same chunks)."""
        from megatron.core import parallel_state

        if not self.valid:  # never the training data in its place: no measure at all
            return {}
        data = self.valid
        mine = [data.batch(chunk) for chunk in _my_chunks(samples, micro)]
        share_loss_norm(mine)  # the mean over every measured token
        total = 0.0
        with torch.no_grad():
            if parallel_state.get_pipeline_model_parallel_world_size() > 1:
                from llmbuild.backends.megatron.pipeline import pipeline_loss

                if mine:
                    total = pipeline_loss(
                        model, mine, self.seq_len, micro, masked_mean, forward_only=True
                    ) * len(mine)
            else:
                for batch in mine:
                    total += float(masked_mean(token_losses(model, batch), batch))
        return {"val_loss": _dp_reduce({"val_loss": total}, len(mine))["val_loss"]}


def full_vocab_logits(model: Any, batch: dict[str, Any], precision: str) -> Any:
    """Logits ``[b, s, v]`` over the whole vocabulary (gathered across tensor-parallel
    ranks, each rank's gradient flowing back to its own shard), in fp32."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    with autocast(precision):
        logits = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"))
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits)
    return logits.float()


def distillation_kl(student: Any, teacher: Any, temperature: float, kind: str, top_k: Any) -> Any:
    """Per-token KL ``[b, s]`` between the temperature-softened distributions: forward
    KL(teacher || student) or reverse KL(student || teacher), over the whole vocabulary
    or the teacher's ``top_k`` tokens (both renormalised there)."""
    if top_k is not None:
        teacher, index = teacher.topk(min(top_k, teacher.shape[-1]), dim=-1)
        student = student.gather(-1, index)
    s = F.log_softmax(student / temperature, dim=-1)
    t = F.log_softmax(teacher / temperature, dim=-1)
    if kind == "reverse":
        return (s.exp() * (s - t)).sum(-1)
    return (t.exp() * (t - s)).sum(-1)


class Distillation(LanguageModel):
    """A student's ``(1 - alpha) * CE + alpha * T^2 * KL`` against a frozen teacher on the
    marked tokens; validation measures the student's own next-token loss (``val_loss``),
    comparable with a model trained without a teacher."""

    pipeline_ok = False

    def __init__(self, train: Any, valid: Any, teacher: Any, stage: dict[str, Any], seq_len: int):
        super().__init__(train, valid, stage["precision"], seq_len)
        self.teacher, self.stage = teacher, stage

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        st = self.stage
        student = full_vocab_logits(model, batch, self.precision)
        with torch.no_grad():
            teacher = full_vocab_logits(self.teacher, batch, self.precision)
        ce = F.cross_entropy(
            student.flatten(0, 1), batch["labels"].flatten(), reduction="none"
        ).view_as(batch["labels"])
        kl = distillation_kl(student, teacher, st["temperature"], st["kl"], st["top_k"])
        alpha, t = st["alpha"], st["temperature"]
        loss = masked_mean((1 - alpha) * ce + alpha * t * t * kl, batch)
        return loss, {"ce": float(masked_mean(ce.detach(), batch)),
                      "kl": float(masked_mean(kl.detach(), batch))}  # fmt: skip


def sequence_logps(model: Any, batch: dict[str, Any], precision: str) -> Any:
    """Summed log-probability of each sequence's marked (answer) tokens, ``[b]``."""
    return -(token_losses(model, batch, precision) * batch["loss_mask"]).sum(-1)


class Reference:
    """The frozen reference policy: a separate model, or the adapted model with its
    adapters switched off."""

    def __init__(self, model: Any = None, adapted: Any = None) -> None:
        self.model, self.adapted = model, adapted

    def token_losses(self, batch: dict[str, Any], precision: str) -> Any:
        """Per-token negative log-probabilities under the reference (no gradient)."""
        with torch.no_grad():
            if self.model is not None:
                return token_losses(self.model, batch, precision)
            from llmbuild.backends.megatron.lora import set_enabled

            set_enabled(self.adapted, False)
            try:
                return token_losses(self.adapted, batch, precision)
            finally:
                set_enabled(self.adapted, True)

    def logps(self, batch: dict[str, Any], precision: str) -> Any:
        return -(self.token_losses(batch, precision) * batch["loss_mask"]).sum(-1)


class _Pairs:
    """Objectives over preference pairs (chosen answers first, then rejected ones):
    batches by index, and validation as the pair-weighted mean of the loss and metrics."""

    pipeline_ok = False
    train: Any
    valid: Any

    def batch(self, indices: list[int]) -> dict[str, Any]:
        return self.train.batch([i % len(self.train) for i in indices])

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, model: Any, samples: int, micro: int) -> dict[str, float]:
        if not self.valid:
            return {}
        data = self.valid
        sums: dict[str, float] = {"loss": 0.0}
        chunks = _my_chunks(min(samples, len(data)), micro)
        batches = [data.batch(chunk) for chunk in chunks]
        count = getattr(self, "loss_count", None)
        if count is not None:  # a weighted mean: each batch's loss carries its share
            share_loss_norm(batches, count)
        shared = 0.0
        with torch.no_grad():
            for chunk, batch in zip(chunks, batches):
                loss, metrics = self.loss(model, batch)
                shared += float(loss)
                sums["loss"] += float(loss) * len(chunk)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * len(chunk)
        reduced = _dp_reduce(sums, sum(len(c) for c in chunks))
        if count is not None:
            reduced["loss"] = _dp_reduce({"loss": shared}, len(batches))["loss"]
        return {f"val_{k}": v for k, v in reduced.items()}


class Preference(_Pairs):
    """DPO: ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))`` (or IPO's squared loss) over
    the policy's and the reference's answer log-probabilities; the reward margin and the
    preference accuracy are ``beta * (...)`` and the share of pairs where it is positive."""

    def __init__(self, train: Any, valid: Any, reference: Reference, stage: dict[str, Any]) -> None:
        self.train, self.valid, self.reference = train, valid, reference
        self.beta, self.kind, self.precision = stage["beta"], stage["loss"], stage["precision"]

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        policy = sequence_logps(model, batch, self.precision)
        ref = self.reference.logps(batch, self.precision)
        m = policy.shape[0] // 2
        logits = (policy[:m] - ref[:m]) - (policy[m:] - ref[m:])
        if self.kind == "ipo":
            loss = ((logits - 1 / (2 * self.beta)) ** 2).mean()
        else:
            loss = -F.logsigmoid(self.beta * logits).mean()
        margin = (self.beta * logits).detach()
        return loss, {
            "margin": float(margin.mean()),
            "accuracy": float((margin > 0).float().mean()),
            # The policy's own preference, whatever the reference prefers.
            "logp_accuracy": float((policy[:m] > policy[m:]).float().mean()),
        }


class ValueHead(torch.nn.Module):
    """A score read from the final hidden state of the last real token: one (a reward) or
    one per class (a classifier's logits). An encoder's (``pooled``) reads the first
    token (BERT's ``[CLS]``) through its pooler (dense, then tanh), as transformers'
    ``BertForSequenceClassification`` does."""

    def __init__(
        self, model: Any, hidden: int, outputs: int = 1, bias: bool = True, pooled: bool = False
    ) -> None:
        super().__init__()
        self.outputs = outputs
        self.pooler = torch.nn.Linear(hidden, hidden) if pooled else None
        self.score = torch.nn.Linear(hidden, outputs, bias=bias)
        self._hidden: list[Any] = []
        model.decoder.register_forward_hook(lambda _m, _a, out: self._hidden.append(out))

    def scores(self, model: Any, batch: dict[str, Any], precision: str) -> Any:
        self._hidden.clear()
        types = {"tokentype_ids": batch["tokentype_ids"]} if "tokentype_ids" in batch else {}
        with autocast(precision):
            model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), **types)
            hidden = self._hidden.pop()  # [s, b, h]
            if self.pooler is not None:
                read = torch.tanh(self.pooler(hidden[0]))
            else:
                read = hidden[batch["last"], torch.arange(hidden.shape[1])]
            scores = self.score(read).float()
            return scores.squeeze(-1) if self.outputs == 1 else scores


class PairwiseReward(_Pairs):
    """A reward model: ``-log sigmoid(score(chosen) - score(rejected))``."""

    def __init__(self, train: Any, valid: Any, head: ValueHead, precision: str) -> None:
        self.train, self.valid, self.head, self.precision = train, valid, head, precision

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        scores = self.head.scores(model, batch, self.precision)
        m = scores.shape[0] // 2
        diff = scores[:m] - scores[m:]
        return -F.logsigmoid(diff).mean(), {
            "accuracy": float((diff > 0).float().mean()),
            "margin": float(diff.detach().mean()),
        }


class Classification(_Pairs):
    """A classifier: cross-entropy of the head's logits against each text's label (weighted
    by class when asked), and the share of texts whose most likely label is right. Multi-
    label (a batch's labels are rows of 0/1): binary cross-entropy per label, and the share
    of texts whose every label is right (probability past 0.5 exactly where it applies)."""

    def __init__(
        self,
        train: Any,
        valid: Any,
        head: ValueHead,
        weights: tuple[float, ...],
        precision: str,
        multi_label: bool = False,
    ) -> None:
        self.train, self.valid, self.head, self.precision = train, valid, head, precision
        self.weights = torch.tensor(weights) if weights else None
        if self.weights is not None and not multi_label:
            # A class-weighted mean over the step's texts, not over each micro batch's.
            self.loss_count = self.class_weight
        self.facts = {
            "classes": head.outputs,
            "truncated": train.truncated + (valid.truncated if valid else 0),
        }

    def class_weight(self, batch: dict[str, Any]) -> float:
        """The summed class weight of the batch's texts: what its weighted mean divides by."""
        return float(self.weights[batch["label"]].sum())

    def batch(self, indices: list[int]) -> dict[str, Any]:
        return self.train.batch(indices)

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        logits = self.head.scores(model, batch, self.precision)
        target = batch["label"]
        if target.dim() == 2:  # multi-label: a mean over equal counts, weighted per label
            loss = F.binary_cross_entropy_with_logits(logits, target, weight=self.weights)
            right = ((logits.detach() > 0) == (target > 0.5)).all(-1).float().mean()
            return loss, {"accuracy": float(right)}
        if self.weights is not None and "loss_norm" in batch:
            per_text = F.cross_entropy(logits, target, weight=self.weights, reduction="sum")
            loss = per_text / batch["loss_norm"]
        else:
            loss = F.cross_entropy(logits, target, weight=self.weights)
        right = (logits.detach().argmax(-1) == target).float().mean()
        return loss, {"accuracy": float(right)}
