"""Builders of what each stage kind optimises, named by the kind's declaration
(``kinds.py``) and called in every rank by ``train.py``: ``builder(cfg, arch, config,
model)`` -> an objective of ``objectives.py`` (or ``grpo.py``). Also the frozen models
some objectives hold: references and reward models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmbuild.backends.megatron.rank_config import RankConfig, WeightsRef


def weights_of(ref: WeightsRef | None) -> dict[str, Any] | None:
    """A stage's canonical weights, read lazily (``weights.rank_weights``), or None."""
    from llmbuild.backends.megatron.weights import rank_weights

    if ref is None:
        return None
    return rank_weights(Path(ref.dir), Path(ref.base) if ref.base else None)


def value_head(model: Any, arch: Any, seed: int) -> dict[str, Any]:
    """Attach a scalar head to ``model``; its initial weights by canonical name."""
    import torch
    from llmbuild.backends.megatron.objectives import ValueHead
    from llmbuild.backends.megatron.shards import _name_seed

    model.value_head = ValueHead(model, arch.hidden)
    gen = torch.Generator().manual_seed(_name_seed(seed, "value_head.score.weight"))
    return {
        "value_head.score.weight": torch.empty(1, arch.hidden).normal_(
            0.0, arch.init_std, generator=gen
        ),
        "value_head.score.bias": torch.zeros(1),
    }


def classifier_head(model: Any, arch: Any, classes: int, seed: int) -> dict[str, Any]:
    """Attach a classification head of ``classes`` outputs to ``model``; its initial
    weights by canonical name. A decoder's has no bias (as transformers' sequence
    classifiers); an encoder's has a pooler and a bias (as BERT's)."""
    import torch
    from llmbuild.backends.megatron.objectives import ValueHead
    from llmbuild.backends.megatron.shards import _name_seed

    encoder = arch.encoder
    model.classifier = ValueHead(model, arch.hidden, classes, bias=encoder, pooled=encoder)
    shapes = {"classifier.score.weight": (classes, arch.hidden)}
    if encoder:
        shapes["classifier.pooler.weight"] = (arch.hidden, arch.hidden)
    state = {}
    for name, shape in shapes.items():
        gen = torch.Generator().manual_seed(_name_seed(seed, name))
        state[name] = torch.empty(shape).normal_(0.0, arch.init_std, generator=gen)
    if encoder:
        state["classifier.score.bias"] = torch.zeros(classes)
        state["classifier.pooler.bias"] = torch.zeros(arch.hidden)
    return state


def frozen_model(
    arch: Any, cfg: RankConfig, config: Any, state: dict[str, Any], head: bool = False
) -> Any:
    """A second model at this layout holding fixed weights: a reference, or with ``head``
    a reward model (``state`` then holds the value head's weights too)."""
    from llmbuild.backends.megatron.model import build_model
    from llmbuild.backends.megatron.shards import load_canonical

    model = build_model(arch, cfg.vocab_size, config)
    if head:
        value_head(model, arch, 0)
    load_canonical(model, state, arch.activation == "swiglu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def reward_scorer(arch: Any, cfg: RankConfig, config: Any, ref: WeightsRef) -> Any:
    """A reward stage's model as a function of token sequences -> scores."""
    import torch
    from llmbuild.backends.megatron.artifact import VALUE_HEAD
    from llmbuild.backends.megatron.posttrain_data import answer_batch
    from safetensors.torch import load_file

    state = {**weights_of(ref), **load_file(str(Path(ref.dir) / VALUE_HEAD))}  # type: ignore[dict-item]
    model = frozen_model(arch, cfg, config, state, head=True)

    def score(sequences: list[list[int]]) -> list[float]:
        batch = answer_batch([(seq, []) for seq in sequences], arch.seq_len, cfg.pad)
        with torch.no_grad():
            return model.value_head.scores(model, batch, "fp32").tolist()

    return score


def _splits(cfg: RankConfig, make: Any, what: str) -> tuple[Any, Any]:
    """Train and validation samples of a post-training stage's one source."""
    train, valid = (make(split) for split in ("train", "validation"))
    source = next(iter(cfg.sources))
    if not len(train):
        raise ValueError(f"source {source!r} has no training {what}")
    if getattr(train, "cut_off", 0) == len(train):
        raise ValueError(
            f"every one of the {len(train)} training {what} of source {source!r} has its answer "
            f"past seq_len = {train.seq_len} tokens, so nothing would be learned: raise "
            "architecture.seq_len or shorten the prompts"
        )
    return train, (valid if len(valid) else None)


def _cut_off(objective: Any) -> Any:
    """The objective, its ``facts`` counting the samples whose answers lie past seq_len,
    and those whose answers it cuts short (the stage notes them)."""
    splits = [s for s in (objective.train, objective.valid) if s]
    for fact, counted in (("answers_cut_off", "cut_off"), ("answers_cut_short", "cut_short")):
        cut = sum(getattr(s, counted, 0) for s in splits)
        if cut:
            objective.facts = {**getattr(objective, "facts", {}), fact: cut}
    return objective


def _reference(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    from llmbuild.backends.megatron.objectives import Reference

    if cfg.stage.get("adapter") and cfg.reference is None:
        return Reference(adapted=model)  # the base: the adapted model, adapters off
    state = weights_of(cfg.reference or cfg.init)
    return Reference(model=frozen_model(arch, cfg, config, state))  # type: ignore[arg-type]


def _text(cfg: RankConfig, arch: Any) -> tuple[Any, Any]:
    """Train and validation samples of the blend of pretrain-role sources."""
    from llmbuild.backends.megatron import objectives as obj
    from llmbuild.backends.megatron.data import build_datasets

    stage = cfg.stage
    train, valid = build_datasets(
        cfg.sources,
        cfg.mixture,
        arch.seq_len,
        cfg.seed,
        cfg.eod,
        cfg.vocab_size,
        stage["steps"] * stage["global_batch"],
        stage["eval_batches"] * stage["global_batch"],
        Path(cfg.work_dir) / "index_cache",
    )
    return obj.GptSamples(train), valid and obj.GptSamples(valid)


def language_model(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    """Pretraining: next-token loss over the blend of pretrain-role sources."""
    from llmbuild.backends.megatron.objectives import LanguageModel

    return LanguageModel(*_text(cfg, arch), cfg.stage["precision"], arch.seq_len)


def masked_lm(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    """Masked-LM pretraining: BERT's masks over the blend of pretrain-role sources."""
    from llmbuild.backends.megatron.mlm import MaskedLM, MaskedSamples, Masking
    from tokenizers import Tokenizer

    if cfg.mask is None:
        raise ValueError("the tokenizer has no mask token")
    train, valid = _text(cfg, arch)
    pieces = None
    if cfg.stage["whole_words"]:
        tok = Tokenizer.from_file(cfg.tokenizer_json)
        pieces = [tok.id_to_token(i) or "" for i in range(cfg.vocab_size)]
    specials = {cfg.eod, cfg.pad, cfg.mask, *([] if cfg.bos is None else [cfg.bos])}
    masking = Masking(cfg.stage, cfg.mask, cfg.vocab_size, specials, cfg.seed, pieces)
    return MaskedLM(
        MaskedSamples(train, masking, 0),
        valid and MaskedSamples(valid, masking, 1),
        cfg.stage["precision"],
    )


def distillation(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    """Distillation: the student's loss against a frozen teacher of its own architecture,
    at the student's tensor-parallel layout."""
    from llmbuild.backends.megatron.model import transformer_config
    from llmbuild.backends.megatron.objectives import Distillation

    from llmbuild.spec.model import Architecture

    teacher_arch = Architecture.model_validate(cfg.teacher_architecture)
    teacher_config = transformer_config(teacher_arch, tensor=cfg.tensor)
    state = weights_of(cfg.teacher)
    teacher = frozen_model(teacher_arch, cfg, teacher_config, state)  # type: ignore[arg-type]
    return Distillation(*_text(cfg, arch), teacher, cfg.stage, arch.seq_len)


def chat_model(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    """Supervised fine-tuning (full or LoRA): next-token loss on the assistant's tokens."""
    from llmbuild.backends.megatron import objectives as obj
    from llmbuild.backends.megatron.posttrain_data import ChatSamples

    stage = cfg.stage
    train, valid = _splits(
        cfg,
        lambda split: ChatSamples(
            cfg.sources, split, arch.seq_len, cfg.seed, cfg.pad, stage["packing"]
        ),
        "conversations",
    )
    return _cut_off(obj.LanguageModel(train, valid, stage["precision"], arch.seq_len))


def _pairs(cfg: RankConfig, arch: Any, scored: bool = False) -> tuple[Any, Any]:
    from llmbuild.backends.megatron.posttrain_data import PairSamples

    return _splits(
        cfg,
        lambda split: PairSamples(cfg.sources, split, arch.seq_len, cfg.pad, scored),
        "preference pairs",
    )


def preference(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    """DPO against a frozen reference."""
    from llmbuild.backends.megatron.objectives import Preference

    train, valid = _pairs(cfg, arch)
    return _cut_off(Preference(train, valid, _reference(cfg, arch, config, model), cfg.stage))


def pairwise_reward(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    """A reward model's pairwise loss on its value head."""
    from llmbuild.backends.megatron.objectives import PairwiseReward

    train, valid = _pairs(cfg, arch, scored=True)
    return _cut_off(PairwiseReward(train, valid, model.value_head, cfg.stage["precision"]))


def encoder_start(bos: int | None, arch: Any) -> int | None:
    """The token an encoder's texts begin with (its pooler reads it): the tokenizer's
    beginning of sequence (BERT's ``[CLS]``); None for a decoder."""
    if not arch.encoder:
        return None
    if bos is None:
        raise ValueError(
            "an encoder's classifier reads the first token of each text, but the tokenizer "
            "has no beginning-of-sequence token"
        )
    return bos


def classification(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    """Cross-entropy of the classification head over each labeled text."""
    from llmbuild.backends.megatron.objectives import Classification
    from llmbuild.backends.megatron.posttrain_data import LabeledSamples

    start = encoder_start(cfg.bos, arch)
    multi = cfg.stage.get("multi_label", False)
    train, valid = _splits(
        cfg,
        lambda split: LabeledSamples(
            cfg.sources,
            split,
            arch.seq_len,
            cfg.pad,
            cfg.eod,
            cfg.labels,
            cfg.seed,
            start,
            multi,
        ),
        "labeled texts",
    )
    return Classification(
        train, valid, model.classifier, cfg.class_weights, cfg.stage["precision"], multi
    )


def group_policy(cfg: RankConfig, arch: Any, config: Any, model: Any) -> Any:
    """GRPO: sampled groups, rewards, and a clipped policy loss with a KL penalty."""
    from llmbuild.backends.megatron.grpo import GroupPolicy
    from llmbuild.backends.megatron.posttrain_data import PromptSamples
    from llmbuild.backends.megatron.rewards import Rewards
    from tokenizers import Tokenizer

    room = arch.seq_len - cfg.stage["max_new_tokens"]
    train, valid = _splits(cfg, lambda split: PromptSamples(cfg.sources, split, room), "prompts")
    models = {i: reward_scorer(arch, cfg, config, ref) for i, ref in cfg.reward_models.items()}
    objective = GroupPolicy(
        model,
        train,
        valid,
        _reference(cfg, arch, config, model),
        Rewards(cfg.stage["rewards"], models),
        Tokenizer.from_file(cfg.tokenizer_json),
        cfg.stage,
        arch.seq_len,
        cfg.vocab_size,
        {cfg.eod, *cfg.stops},
        cfg.pad,
        cfg.seed,
    )
    long = sum(s.long for s in (train, valid) if s)
    if long:  # the stage notes them
        objective.facts = {"prompts_too_long": long}
    return objective
