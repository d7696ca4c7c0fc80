"""The spec models of the stage kinds trained on megatron-core: pretrain, mlm, distill, sft,
lora, dpo, grpo, reward and classify (registered in ``kinds.py``). Torch-free: the planner imports them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import Field, field_validator, model_validator

from llmbuild.spec.base import Name, PositiveInt, SpecModel, StrList, added, content, marked, ref
from llmbuild.spec.model import ArchitecturePatch
from llmbuild.spec.tables import StageTable

LoraTarget = Literal["qkv", "proj", "fc1", "fc2"]
Label = Annotated[str, Field(min_length=1, max_length=200)]


class Schedule(SpecModel):
    """Learning-rate schedule."""

    kind: Literal["constant", "linear", "cosine", "wsd"] = "cosine"
    """Shape after warmup: constant, linear decay, cosine decay, or warmup-stable-decay."""
    warmup: int = Field(0, ge=0)
    """Steps of linear warmup from 0 to `lr`."""
    min_lr: float = Field(0.0, ge=0)
    """Learning rate at the end of the decay."""
    decay_fraction: float = Field(0.2, gt=0, le=1)
    """For `wsd`: the fraction of steps spent decaying at the end."""


HF_LORA_NAMES = {
    **dict.fromkeys(("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query_key_value"), "qkv"),
    **dict.fromkeys(("o_proj", "out_proj", "dense"), "proj"),
    **dict.fromkeys(("gate_proj", "up_proj", "gate_up_proj", "c_fc", "fc_in", "w1", "w3"), "fc1"),
    **dict.fromkeys(("down_proj", "fc_out", "w2"), "fc2"),
}
"""Layer names PEFT users write (transformers' modules), by the layer they are part of."""
HF_LORA_HINT = (
    "qkv (q_proj, k_proj and v_proj as one), proj (o_proj), fc1 (gate_proj and up_proj as "
    "one) and fc2 (down_proj)"
)


class LoraAdapter(SpecModel):
    """Low-rank adapters on the parallel linear layers."""

    rank: PositiveInt = 8
    """Rank of the adapter matrices."""
    alpha: float = Field(16.0, gt=0)
    """Scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input."""
    targets: tuple[LoraTarget, ...] = Field(("qkv", "proj"), min_length=1)
    """Layers that get adapters: qkv, proj (attention output), fc1, fc2 (a set: their
    order does not count)."""

    @field_validator("targets", mode="before")
    @classmethod
    def _not_transformers_names(cls, value: Any) -> Any:
        names = value if isinstance(value, (list, tuple)) else [value]
        theirs = [n for n in names if isinstance(n, str) and n in HF_LORA_NAMES]
        if theirs:
            raise ValueError(
                f"{theirs[0]!r} is a transformers layer name; here the layers are "
                f"{HF_LORA_HINT} (so {theirs[0]!r} is {HF_LORA_NAMES[theirs[0]]!r})"
            )
        return value

    @field_validator("targets")
    @classmethod
    def _as_set(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # One order for every listing of the same layers, so that a reordering changes
        # no key: the adapters are the same.
        if len(set(value)) != len(value):
            raise ValueError(f"targets must be distinct (got {list(value)})")
        order = get_args(LoraTarget)
        return tuple(sorted(value, key=order.index))


class StageBase(StageTable):
    """Fields every training stage has."""

    steps: PositiveInt = Field(le=1_000_000_000)
    """Number of optimizer steps (at most a billion)."""
    global_batch: PositiveInt
    """Sequences per optimizer step, across all data-parallel ranks."""
    lr: float = Field(gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    grad_clip: float = Field(1.0, ge=0)
    """Gradient norm clipping threshold; 0 turns clipping off."""
    schedule: Schedule = Schedule()
    """Learning-rate schedule."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Numeric precision of training."""
    eval_every: PositiveInt | None = marked("execution", None)
    """Steps between validation-loss measurements; only at the end when omitted."""
    eval_batches: PositiveInt = 8
    """Validation-loss measurements use this many global batches of validation
    sequences (the same sequences whatever the parallel layout)."""
    log_every: PositiveInt = marked("execution", 10)
    """Steps between lines of training metrics (loss, lr, grad_norm, ...) in the node's log."""
    checkpoint_every: PositiveInt = marked("execution", 100)
    """Steps between resumable checkpoints in the node's work dir."""

    @model_validator(mode="after")
    def _betas(self) -> StageBase:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1) (got {list(self.betas)})")
        if self.schedule.warmup > self.steps:
            raise ValueError(
                f"schedule.warmup ({self.schedule.warmup}) exceeds steps ({self.steps})"
            )
        return self


class Pretrain(StageBase):
    """Next-token training on pretrain-role text, from scratch or continued."""

    kind: Literal["pretrain"]
    """Stage kind."""
    from_: Name | None = ref("stage", None, alias="from")
    """Stage whose weights to continue from; from scratch when omitted."""
    data: StrList | None = ref(
        "tokens", None, slot="data:{name}", source_role="pretrain", omitted="pretrain"
    )
    """Pretrain-role sources blended by their weights; all of them when omitted."""
    architecture: ArchitecturePatch | None = added(None)  # type: ignore[valid-type]
    """This stage's own changes to `[architecture]` (a model of another size, trained from
    scratch: a sweep's points, say); stages trained from it share its architecture."""


class Distill(StageBase):
    """Knowledge distillation on pretrain-role text: a student (its own architecture, or
    `from` a stage) learns the next-token distribution of a frozen teacher stage."""

    kind: Literal["distill"]
    """Stage kind."""
    teacher: Name = ref("stage")
    """The stage whose next-token distribution the student learns; it shares the spec's
    tokenizer, so its vocabulary must be the student's."""
    from_: Name | None = ref("stage", None, alias="from")
    """Stage whose weights start the student (a pruned teacher, say); from scratch when
    omitted."""
    data: StrList | None = ref(
        "tokens", None, slot="data:{name}", source_role="pretrain", omitted="pretrain"
    )
    """Pretrain-role sources blended by their weights; all of them when omitted."""
    architecture: ArchitecturePatch | None = None  # type: ignore[valid-type]
    """The student's changes to `[architecture]` (fewer layers, a smaller hidden size).
    Not with `from`: a student started from a stage has that stage's shape."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of the distillation term: the loss is `(1 - alpha) * CE + alpha * T^2 *
    KL`, CE against the data's next tokens."""
    temperature: float = Field(2.0, gt=0)
    """Temperature `T` that softens both distributions in the KL term (at least 0.1: the
    term's gradients scale with `T`)."""
    kl: Literal["forward", "reverse"] = "forward"
    """`forward`: KL(teacher || student), which spreads the student over what the teacher
    allows; `reverse`: KL(student || teacher), which seeks the teacher's modes."""
    top_k: PositiveInt | None = None
    """Compare the two distributions over the teacher's `top_k` most likely tokens only
    (both renormalised there), as with stored teacher logits; the whole vocabulary when
    omitted."""

    @field_validator("temperature")
    @classmethod
    def _softened(cls, value: float) -> float:
        if value < 0.1:
            raise ValueError(
                f"temperature = {value:g}: the gradient of T^2 * KL with respect to the "
                "student's logits is T times the difference of the two sharpened "
                "distributions, at most 2T in size (cross-entropy's is up to 2), so the "
                "distillation term would teach next to nothing; use a temperature of at "
                "least 0.1 (1 to 4 is usual)"
            )
        return value

    @field_validator("top_k")
    @classmethod
    def _two_or_more(cls, value: int | None) -> int | None:
        if value == 1:
            raise ValueError(
                "top_k = 1 leaves one token, where both renormalised distributions are 1: "
                "the KL is 0 and teaches nothing; use top_k >= 2, or omit it for the whole "
                "vocabulary"
            )
        return value

    @model_validator(mode="after")
    def _shape(self) -> Distill:
        if self.from_ is not None and self.architecture is not None:
            raise ValueError(
                "a student `from` a stage has that stage's architecture: set `from` or "
                "`architecture`, not both"
            )
        return self


class Mlm(StageBase):
    """Masked-LM pretraining of an encoder (`style = "bert"`) on pretrain-role text: some
    tokens of each sequence are hidden and the model learns to fill them in."""

    kind: Literal["mlm"]
    """Stage kind."""
    from_: Name | None = ref("stage", None, alias="from")
    """Stage whose weights to continue from (an imported BERT, say); from scratch when
    omitted."""
    data: StrList | None = ref(
        "tokens", None, slot="data:{name}", source_role="pretrain", omitted="pretrain"
    )
    """Pretrain-role sources blended by their weights; all of them when omitted."""
    architecture: ArchitecturePatch | None = None  # type: ignore[valid-type]
    """This stage's own changes to `[architecture]`."""
    mask_rate: float = Field(0.15, gt=0, lt=1)
    """Share of each sequence's tokens (special tokens aside) the loss is on."""
    mask_token_rate: float = Field(0.8, ge=0, le=1)
    """Share of the chosen tokens replaced by the mask token."""
    random_token_rate: float = Field(0.1, ge=0, le=1)
    """Share of the chosen tokens replaced by a random token; the rest stay as they are."""
    whole_words: bool = False
    """Choose whole words: every piece of a chosen word (WordPiece `##` pieces, the
    letters and digits of a word under a character tokenizer)."""

    @model_validator(mode="after")
    def _rates(self) -> Mlm:
        if self.mask_token_rate + self.random_token_rate > 1:
            raise ValueError(
                f"mask_token_rate + random_token_rate ({self.mask_token_rate} + "
                f"{self.random_token_rate}) exceeds 1"
            )
        return self


class Sft(StageBase):
    """Supervised fine-tuning on chat or prompt/completion data, loss on the answer only."""

    kind: Literal["sft"]
    """Stage kind."""
    from_: Name = ref("stage", alias="from")
    """Stage whose weights to fine-tune."""
    data: Name = ref("tokens", slot="data:{name}", source_role="chat")
    """A chat-role source."""
    lr: float = Field(2e-5, gt=0)
    """Peak learning rate."""
    packing: bool = True
    """Pack several conversations per sequence with document masks, instead of padding."""


class Lora(Sft):
    """Fine-tuning of low-rank adapters on a frozen base."""

    kind: Literal["lora"]  # type: ignore[assignment]
    """Stage kind."""
    lr: float = Field(1e-4, gt=0)
    """Peak learning rate."""
    adapter: LoraAdapter = LoraAdapter()
    """The adapters."""
    merge: bool = False
    """Also produce weights with the adapters merged into the base."""

    @property
    def adapters_only(self) -> bool:
        return not self.merge

    @property
    def has_adapters(self) -> bool:
        return True


class Dpo(StageBase):
    """Direct preference optimisation on (prompt, chosen, rejected) pairs."""

    kind: Literal["dpo"]
    """Stage kind."""
    from_: Name = ref("stage", alias="from")
    """Stage whose weights to optimise; also the frozen reference unless `reference` is set."""
    data: Name = ref("tokens", slot="data:{name}", source_role="preferences")
    """A preferences-role source."""
    reference: Name | None = ref("stage", None)
    """Stage used as the frozen reference model; the `from` stage when omitted."""
    lr: float = Field(5e-6, gt=0)
    """Peak learning rate."""
    beta: float = Field(0.1, gt=0)
    """Strength of the implicit KL constraint."""
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """Preference loss."""
    adapter: LoraAdapter | None = None
    """Train LoRA adapters instead of all weights; the reference is then the base with
    adapters off."""

    @property
    def adapters_only(self) -> bool:
        return self.adapter is not None

    @property
    def has_adapters(self) -> bool:
        return self.adapter is not None


class ExactMatchReward(SpecModel):
    """1 when the completion's answer equals the prompt record's answer field."""

    kind: Literal["exact_match"]
    """Reward kind."""
    weight: float = 1.0
    """Weight of this reward in the sum."""
    partial: bool = added(False)
    """Partial credit: the share of the answer's characters the completion has right,
    position by position (an exact match still scores 1). A group that is all wrong
    then still tells nearer answers from farther ones."""


class RegexReward(SpecModel):
    """1 when the completion matches a regular expression."""

    kind: Literal["regex"]
    """Reward kind."""
    pattern: str = Field(min_length=1)
    """Python regular expression searched in the completion."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return value

    weight: float = 1.0
    """Weight of this reward in the sum."""


class LengthReward(SpecModel):
    """A penalty growing with the distance of the completion's length from a target."""

    kind: Literal["length"]
    """Reward kind."""
    target: PositiveInt
    """Target length in tokens."""
    weight: float = -0.01
    """Reward per token of distance from the target (negative: a penalty)."""


class ModelReward(SpecModel):
    """The score of a trained reward-model stage."""

    kind: Literal["model"]
    """Reward kind."""
    stage: Name = ref("stage", slot="reward:{index}", stage_kinds=("reward",))
    """A stage of kind `reward`."""
    weight: float = 1.0
    """Weight of this reward in the sum."""


class FunctionReward(SpecModel):
    """A user function `module:function(prompt, completion, record) -> float`. Runs user code."""

    kind: Literal["function"]
    """Reward kind."""
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """Import path `package.module:function`. The module is found beside the spec file
    that names it, then on Python's path; validate checks that its file defines the
    function (reading it, never running it)."""
    module_file: str | None = content(None, slot="function:{index}")
    """Set by llmbuild: the module's own file (`module.py`, or a package's
    `__init__.py`), which the stage imports. Its content counts, so editing it rebuilds
    the stage; the files it imports do not count: keep the code that decides the reward
    in this one file."""
    weight: float = 1.0
    """Weight of this reward in the sum."""


Reward = Annotated[
    Union[ExactMatchReward, RegexReward, LengthReward, ModelReward, FunctionReward],
    Field(discriminator="kind"),
]


class Grpo(StageBase):
    """Group relative policy optimisation: sample, reward, normalise within the group."""

    kind: Literal["grpo"]
    """Stage kind."""
    from_: Name = ref("stage", alias="from")
    """Stage whose policy to optimise; also the KL reference."""
    data: Name = ref("tokens", slot="data:{name}", source_role="prompts")
    """A prompts-role source."""
    lr: float = Field(1e-6, gt=0)
    """Peak learning rate."""
    num_generations: int = Field(4, ge=2)
    """Completions sampled per prompt (the group); `global_batch` counts prompts, so a
    step trains on `global_batch x num_generations` completions."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    max_new_tokens: PositiveInt = 32
    """Maximum completion length."""
    kl_coef: float = Field(0.04, ge=0)
    """Weight of the KL penalty to the reference."""
    clip: float = Field(0.2, gt=0)
    """PPO-style ratio clipping."""
    rewards: tuple[Reward, ...] = Field(min_length=1)
    """Rewards summed by weight, e.g. `[{kind = "exact_match"}]`."""

    @field_validator("rewards")
    @classmethod
    def _some_weight(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if all(reward.weight == 0 for reward in value):
            raise ValueError(
                "every reward has weight 0: each completion then earns 0 and the policy "
                "learns nothing; give a reward a weight"
            )
        return value

    # Not `added`: a stage built before this field averaged over every completion, and
    # "skip" changes what it trains to, so every GRPO stage's key changes with it.
    uniform_groups: Literal["skip", "keep"] = "skip"
    """A group whose completions all earn the same reward has no advantage to learn
    from. `skip`: the policy loss averages over the other groups' completions only, so
    such groups do not shrink the step (the share of groups that count is the
    `informative` metric). `keep`: average over every completion, as GRPO's paper does."""


class RewardModel(StageBase):
    """A scalar-head reward model trained on preference pairs with a pairwise loss."""

    kind: Literal["reward"]
    """Stage kind."""
    from_: Name = ref("stage", alias="from")
    """Stage whose weights initialise the reward model."""
    data: Name = ref("tokens", slot="data:{name}", source_role="preferences")
    """A preferences-role source."""
    lr: float = Field(1e-5, gt=0)
    """Peak learning rate."""


class Classify(StageBase):
    """Sequence classification on labeled texts: a linear head reads the final hidden
    state of each text's last token (where a decoder has read the whole text) and is
    trained with the model under cross-entropy."""

    kind: Literal["classify"]
    """Stage kind."""
    from_: Name = ref("stage", alias="from")
    """Stage whose weights the classifier starts from (pretrained here or imported)."""
    data: Name = ref("tokens", slot="data:{name}", source_role="labeled")
    """A labeled-role source; its validation split measures the classifier."""
    labels: tuple[Label, ...] | None = Field(None, min_length=2)
    """The label names in the order of their ids (the head's outputs); the training
    split's labels, sorted, when omitted. A label of the data that is not listed is an
    error, and so is a listed label without training texts."""
    class_weights: dict[Label, float] | None = None
    """Weight of each label in the loss, by name (the inverse of its frequency, say, for
    imbalanced classes); 1 for a label not listed. The loss is the weighted mean over
    each step's texts, whatever the micro batch."""
    lr: float = Field(1e-4, gt=0)
    """Peak learning rate."""
    multi_label: bool = added(False)
    """Each text has any number of the labels (a list in its label field, empty for
    none): one sigmoid per label under binary cross-entropy, and a label is predicted
    where its probability passes 0.5. Accuracy is then the share of texts whose labels
    are all right."""

    @model_validator(mode="after")
    def _labels(self) -> Classify:
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct (got {list(self.labels)})")
        weights = self.class_weights or {}
        bad = [(name, w) for name, w in weights.items() if not w > 0]
        if bad:
            raise ValueError(f"class_weights.{bad[0][0]} must be positive (got {bad[0][1]})")
        unknown = sorted(set(weights) - set(self.labels or weights))
        if unknown:
            raise ValueError(f"class_weights names labels not in labels: {unknown}")
        return self


STAGES = (Pretrain, Mlm, Distill, Sft, Lora, Dpo, Grpo, RewardModel, Classify)
