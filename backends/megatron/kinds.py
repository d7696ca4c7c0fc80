"""The stage kinds megatron-core trains, each declared once: its spec model, what it
optimises (an objective builder, imported only in the ranks), and whether it runs with
pipeline and sequence parallelism. Registered through the ``llmbuild.kinds`` entry point."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.megatron.config import TrainConfig
from llmbuild.backends.megatron.reward_functions import function_problem, record_module_files
from llmbuild.backends.megatron.spec import (
    Classify,
    Distill,
    Dpo,
    Grpo,
    Lora,
    Mlm,
    Pretrain,
    RewardModel,
    Sft,
)

from llmbuild.errors import Path, Problem
from llmbuild.kinds import Kind, NodeRefs, SpecView
from llmbuild.spec.base import SpecModel
from llmbuild.spec.model import patched

OBJECTIVES = "llmbuild.backends.megatron.objective_builders"


def stage_architecture(spec: Any, stage: Any) -> Any:
    """The architecture a stage trains: the spec's, with the changes of the first stage
    up its ``from`` chain that has its own (a model's shape follows its weights)."""
    return _chain_architecture(spec.architecture, {s.name: s for s in spec.stage}, stage)


def _chain_architecture(
    base: Any, stages: dict[str, Any], stage: Any, seen: set[str] | None = None
) -> Any:
    seen = set() if seen is None else seen  # a cycle (reported elsewhere) ends the walk
    while stage is not None and stage.name not in seen:
        seen.add(stage.name)
        patch = getattr(stage, "architecture", None)
        if patch is not None:
            shape_from = getattr(stage, "shape_from", None)
            if shape_from is not None:  # a pruned stage: its parent's shape, made smaller
                parent = stages.get(stage.from_)
                return shape_from(_chain_architecture(base, stages, parent, seen))
            return patched(base, patch)
        stage = stages.get(getattr(stage, "from_", None) or "")
    return base


SCORING = {"classify": "classifier", "reward": "reward model"}
"""Stage kinds whose model scores texts (a head of its own) instead of writing them: its
language-model head is its base's, untrained since."""


def view_architecture(view: SpecView, stage_name: str) -> Any:
    """The architecture a stage of the spec holds (None when unknown)."""
    from pydantic import ValidationError

    stage = view.stages.get(stage_name)
    if stage is None or view.architecture is None:
        return None
    try:
        return _chain_architecture(view.architecture, view.stages, stage)
    except (ValidationError, ValueError):
        return None


# The architecture fields a stage's weights are laid out by: a stage that starts from
# another's weights must keep them.
_WEIGHT_FIELDS = (
    "style", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "head_dim", "norm",
    "activation", "position", "bias", "norm_bias", "qkv_bias", "qk_norm", "tie_embeddings",
)  # fmt: skip


def _shape_kept_problems(item: Any, where: Path, view: SpecView) -> list[Problem]:
    """A stage `from` another with architecture changes its weights cannot take."""
    parent = view.stages.get(getattr(item, "from_", None) or "")
    patch = getattr(item, "architecture", None)
    if parent is None or patch is None or getattr(item, "shape_from", None) is not None:
        return []
    own, theirs = view_architecture(view, item.name), view_architecture(view, parent.name)
    if own is None or theirs is None:
        return []
    for field in _WEIGHT_FIELDS:
        mine, its = getattr(own, field), getattr(theirs, field)
        if mine != its:
            set_here = getattr(patch, field, None) is not None
            return [
                Problem(
                    f"{field} ({mine!r}) differs from stage {parent.name!r}'s ({its!r}), "
                    "whose weights this stage starts from: they would not fit; keep its "
                    "shape, or distill (kind = 'distill') into the new one",
                    (*where, "architecture", field) if set_here else (*where, "architecture"),
                )
            ]
    return []


def _recompute_problems(item: Any, where: Path, view: SpecView) -> list[Problem]:
    """Full recomputation where megatron's checkpointed layers give no gradient: LoRA
    (the frozen base's activations need none), and bf16 on a CPU (the recomputed forward
    runs outside autocast)."""
    par = view.parallelism
    if par is None or par.recompute != "full":
        return []
    at = ("parallelism", "recompute")
    if getattr(item, "has_adapters", False):
        return [
            Problem(
                f"recompute = 'full' cannot train the LoRA adapters of stage {item.name!r} "
                "(the recomputed layers of a frozen model pass no gradient on to them): use "
                "'selective' or 'none'",
                at,
            )
        ]
    if getattr(item, "precision", "fp32") == "bf16" and par.device != "gpu":
        return [
            Problem(
                f"recompute = 'full' with precision = 'bf16' (stage {item.name!r}) is not "
                "supported on a CPU (the recomputed forward runs outside bf16 autocast): "
                "use 'selective' or 'none', or precision = 'fp32'",
                at,
            )
        ]
    return []


def is_encoder(view: SpecView, stage_name: str) -> bool:
    """Whether a stage of the spec holds a bert-style encoder (False when unknown)."""
    return bool(getattr(view_architecture(view, stage_name), "encoder", False))


def _patch_problems(arch: Any, patch: Any, par: Any, where: Path) -> list[Problem]:
    from pydantic import ValidationError

    try:
        own = patched(arch, patch)
    except ValidationError as e:
        return [
            Problem(f"with its changes, the architecture is invalid: {e.errors()[0]['msg']}", where)
        ]
    out = []
    if own.hidden % own.heads:
        out.append(Problem(f"heads ({own.heads}) must divide hidden ({own.hidden})", where))
    if own.heads % own.kv_heads:
        out.append(Problem(f"kv_heads ({own.kv_heads}) must divide heads ({own.heads})", where))
    # What the layout cannot split in the spec's own architecture is said there once,
    # not again at every stage that keeps it.
    inherited = {p.message for p in layout_problems(arch, par, where)}
    return out + [p for p in layout_problems(own, par, where) if p.message not in inherited]


def layout_problems(arch: Any, par: Any, where: Path) -> list[Problem]:
    """Where the parallel layout cannot split an architecture."""
    out = []
    if par is not None and (arch.heads % par.tensor or arch.kv_heads % par.tensor):
        out.append(
            Problem(
                f"tensor ({par.tensor}) must divide heads ({arch.heads}) and kv_heads "
                f"({arch.kv_heads})",
                where,
            )
        )
    if par is not None and arch.layers % par.pipeline:
        out.append(Problem(f"pipeline ({par.pipeline}) must divide layers ({arch.layers})", where))
    return out


def _memory_problems(item: Any, where: Path, view: SpecView, patch: Any) -> list[Problem]:
    """A model and batch that cannot fit where they would run, before anything runs."""
    from llmbuild.backends.megatron.sizes import memory_limit, rank_memory
    from pydantic import ValidationError

    from llmbuild.errors import human_bytes

    par = view.parallelism
    try:
        arch = patched(view.architecture, patch) if patch is not None else view.architecture
        tok = view.raw.get("tokenizer") if isinstance(view.raw.get("tokenizer"), dict) else {}
        vocab = int(arch.vocab_size or tok.get("vocab_size") or 0)
        need = rank_memory(arch, par, vocab, par.micro_batch, item.precision)
    except (ValidationError, ValueError, TypeError):
        return []  # a shape problem, reported on its own
    limit, what, shared = memory_limit(par)
    per_rank = need["weights"] + need["activations"]
    ranks = par.tensor * par.pipeline * par.data
    total = per_rank * ranks if shared else per_rank
    if total <= limit:
        return []
    return [
        Problem(
            f"the model and batch need at least {human_bytes(total)} ({need['params']:.3g} "
            f"parameters: {human_bytes(need['weights'])} of weights and gradients and "
            f"{human_bytes(need['activations'])} of activations per rank at micro_batch "
            f"{par.micro_batch} and seq_len {arch.seq_len}"
            + (f", {ranks} ranks" if ranks > 1 and shared else "")
            + f"), more than {what} ({human_bytes(limit)}): shrink the model, seq_len or "
            "micro_batch, or split it over more tensor or pipeline ranks",
            where,
        )
    ]


class TrainedStage(Kind):
    """A stage trained by the megatron backend's rank loop."""

    blends = False
    """Whether it reads a blend of pretrain-role sources (by their weights)."""

    def __init__(
        self,
        model: type[SpecModel],
        objective: str,
        pipeline: bool = True,
        sequence_parallel: bool = True,
        trains: str = "decoder",
    ) -> None:
        super().__init__(model, "megatron")
        self.trains = trains
        """``decoder`` (next-token models), ``encoder`` (``style = "bert"``) or ``either``."""
        self.objective = objective
        """``module:function`` building the objective in a rank (see ``train.py``)."""
        self.pipeline = pipeline
        """Whether it trains with pipeline parallelism; without, the pipeline ranks become
        data-parallel ranks (two models and sampling per step do not fit 1F1B)."""
        self.sequence_parallel = sequence_parallel
        """Whether it uses sequence parallelism when it is on (stages that read hidden
        states mid-model or sample sequences of every length cannot)."""

    def uses_sequence_parallel(self, stage: Any) -> bool:
        return self.sequence_parallel and not stage.has_adapters

    def config(self, item: Any, spec: Any, refs: NodeRefs) -> TrainConfig:
        mixture = (
            {n: spec.source_named(n).weight for n in refs.names("data")} if self.blends else {}
        )
        return TrainConfig(
            stage=item,
            architecture=stage_architecture(spec, item),
            seed=spec.model.seed,
            mixture=mixture,
            parallelism=spec.parallelism,
        )

    def labels(self, item: Any) -> dict[str, str]:
        return {
            "stage": f"stage.{item.name}",
            "architecture": "architecture",
            "seed": "model.seed",
            "mixture": "data.sources.{}.weight",
        }

    def _model_problems(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        """A decoder where the kind trains an encoder, or the other way round."""
        from pydantic import ValidationError

        if view.architecture is None or self.trains == "either":
            return []
        try:
            arch = _chain_architecture(view.architecture, view.stages, item)
        except ValidationError:
            return []  # a shape problem, reported on its own
        if self.trains == "encoder" and not arch.encoder:
            return [
                Problem(
                    f"an {item.kind} stage trains an encoder, but the model is a "
                    f"{arch.style}-style decoder: set architecture.style = 'bert'",
                    where,
                )
            ]
        if self.trains == "decoder" and arch.encoder:
            return [
                Problem(
                    f"a {item.kind} stage trains a decoder (next-token prediction), but the "
                    "model is a bert-style encoder: encoders train with mlm and classify "
                    "stages",
                    where,
                )
            ]
        return []

    def _base_problems(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        """A model that writes text trained from (or against) one that scores it: the
        scorer's language-model head is its own base's, untrained since."""
        if item.kind in SCORING:
            return []
        out = []
        for field, key in (("from_", "from"), ("reference", "reference"), ("teacher", "teacher")):
            base = view.stages.get(getattr(item, field, None) or "")
            if base is not None and base.kind in SCORING:
                hint = (
                    f' (to reward with it: rewards = [{{kind = "model", stage = "{base.name}"}}])'
                    if base.kind == "reward" and item.kind == "grpo"
                    else ""
                )
                out.append(
                    Problem(
                        f"stage {base.name!r} is a {SCORING[base.kind]}: it scores texts, and "
                        "its language-model head is its base's, untrained since; a "
                        f"{item.kind} stage needs a model that writes text{hint}",
                        (*where, key),
                    )
                )
        return out

    def _length_problems(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        """Completions GRPO samples past the context: a prompt and its completion are
        trained as one sequence of at most seq_len tokens."""
        from pydantic import ValidationError

        new = getattr(item, "max_new_tokens", None)
        if new is None or view.architecture is None:
            return []
        try:
            seq_len = _chain_architecture(view.architecture, view.stages, item).seq_len
        except ValidationError:
            return []  # a shape problem, reported on its own
        if new < seq_len:
            return []
        return [
            Problem(
                f"max_new_tokens ({new}) must be less than the model's seq_len ({seq_len}): a "
                "prompt and its completion are trained as one sequence of seq_len tokens, "
                "so the tokens past it would be rewarded but not trained on",
                (*where, "max_new_tokens"),
            )
        ]

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        out = self._model_problems(item, where, view) + self._base_problems(item, where, view)
        out += _shape_kept_problems(item, where, view) + _recompute_problems(item, where, view)
        parent = view.stages.get(getattr(item, "from_", None) or "")
        if item.has_adapters and parent is not None and parent.adapters_only:
            out.append(
                Problem(
                    f"LoRA adapters need a base with full weights, but stage {parent.name!r} "
                    f"holds only adapters; set merge = true on {parent.name!r}",
                    (*where, "from"),
                )
            )
        out += self._length_problems(item, where, view)
        par = view.parallelism
        patch = getattr(item, "architecture", None)
        if patch is not None and view.architecture is not None:
            out += _patch_problems(view.architecture, patch, par, (*where, "architecture"))
        if par is not None and view.architecture is not None:
            out += _memory_problems(item, where, view, patch)
        if par is not None:
            replicas = par.data * (1 if self.pipeline else par.pipeline)
            if item.global_batch % (par.micro_batch * replicas):
                if self.pipeline:
                    data, factors = "parallelism.data", f"{par.micro_batch} x {par.data}"
                else:
                    data = "parallelism.data x pipeline"
                    factors = f"{par.micro_batch} x {par.data} x {par.pipeline}"
                counts = " (both count prompts: a step samples num_generations per prompt)"
                out.append(
                    Problem(
                        f"global_batch ({item.global_batch}) must be a multiple of parallelism."
                        f"micro_batch x {data} ({factors})"
                        + (counts if item.kind == "grpo" else ""),
                        (*where, "global_batch"),
                    )
                )
        return out


class PretrainStage(TrainedStage):
    blends = True

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        out = super().check(item, where, view)
        roles = [s.role for s in view.sources.values()]
        complete = len(roles) == len(view.raw_items(("data", "sources")))
        if item.data is None and roles and complete and "pretrain" not in roles:
            out.append(Problem("no pretrain-role data source to train on", where))
        arch, tok = view.architecture, view.raw.get("tokenizer")
        rows = getattr(arch, "vocab_size", None)
        if getattr(item, "from_", None) is None and rows is not None and isinstance(tok, dict):
            from llmbuild.backends.checkpoint.kinds import known_tokens

            tokens, key = known_tokens(tok)
            if tokens is not None and tokens > rows:  # the stage would fail at its start
                out.append(
                    Problem(
                        f"this tokenizer would have {tokens} tokens but the embedding only "
                        f"{rows} rows (architecture.vocab_size): raise it, or leave it unset "
                        "to take the tokenizer's",
                        ("tokenizer", key),
                    )
                )
        return out


class MlmStage(PretrainStage):
    """Masked-LM pretraining: an encoder, and a tokenizer with a mask token."""

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        out = super().check(item, where, view)
        tok = view.raw.get("tokenizer")
        if isinstance(tok, dict) and tok.get("kind") != "pretrained" and not tok.get("mask_token"):
            out.append(
                Problem(
                    f"stage {item.name!r} (mlm) hides tokens behind a mask token, but the "
                    'tokenizer has none: set tokenizer.mask_token ("<|mask|>", say)',
                    ("tokenizer",),
                )
            )
        return out


class DistillStage(PretrainStage):
    """A student and its teacher: their vocabularies must be one."""

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        from pydantic import ValidationError

        out = super().check(item, where, view)
        teacher = view.stages.get(item.teacher)
        if teacher is None or view.architecture is None:
            return out
        try:
            ours, theirs = (
                _chain_architecture(view.architecture, view.stages, s) for s in (item, teacher)
            )
        except ValidationError:
            return out  # a shape problem, reported on its own
        for field in ("vocab_size", "vocab_multiple"):
            if getattr(ours, field) != getattr(theirs, field):
                out.append(
                    Problem(
                        f"the student's {field} ({getattr(ours, field)}) differs from the "
                        f"{field} of teacher {teacher.name!r} ({getattr(theirs, field)}): a "
                        "student learns the teacher's distribution over one shared vocabulary",
                        (*where, "architecture", field),
                    )
                )
        if theirs.position == "learned" and ours.seq_len > theirs.seq_len:
            out.append(
                Problem(
                    f"the student's seq_len ({ours.seq_len}) is longer than teacher "
                    f"{teacher.name!r}'s ({theirs.seq_len}), whose learned positions end there: "
                    "the teacher reads every training sequence; give the student its seq_len",
                    (*where, "architecture", "seq_len"),
                )
            )
        return out


class GrpoStage(TrainedStage):
    """GRPO: a function reward's module is found beside the spec file that names it, and
    checked to define the function, before anything runs."""

    def rebase(self, raw: dict[str, Any], folder: str) -> None:
        record_module_files(raw, folder)

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        out = super().check(item, where, view)
        for i, reward in enumerate(item.rewards):
            if reward.kind == "function":
                problem = function_problem(reward.function, reward.module_file)
                if problem is not None:
                    out.append(Problem(problem, (*where, "rewards", i, "function")))
        return out


KINDS = (
    PretrainStage(Pretrain, f"{OBJECTIVES}:language_model"),
    MlmStage(
        Mlm, f"{OBJECTIVES}:masked_lm", pipeline=False, sequence_parallel=False, trains="encoder"
    ),
    DistillStage(Distill, f"{OBJECTIVES}:distillation", pipeline=False, sequence_parallel=False),
    TrainedStage(Sft, f"{OBJECTIVES}:chat_model"),
    TrainedStage(Lora, f"{OBJECTIVES}:chat_model", sequence_parallel=False),
    TrainedStage(Dpo, f"{OBJECTIVES}:preference", pipeline=False),
    GrpoStage(Grpo, f"{OBJECTIVES}:group_policy", pipeline=False, sequence_parallel=False),
    TrainedStage(
        RewardModel, f"{OBJECTIVES}:pairwise_reward", pipeline=False, sequence_parallel=False
    ),
    TrainedStage(
        Classify,
        f"{OBJECTIVES}:classification",
        pipeline=False,
        sequence_parallel=False,
        trains="either",
    ),
)
