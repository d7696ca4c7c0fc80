"""The ``[model]``, ``[tokenizer]``, ``[architecture]`` and ``[parallelism]`` tables."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llmbuild.spec.base import (
    Name,
    PositiveInt,
    SpecModel,
    StrList,
    added,
    content,
    marked,
    ref,
)


class ModelInfo(SpecModel):
    """What the model is called and how its randomness is seeded."""

    name: Name = marked("label")
    """Name of the model, used for exports and reports."""
    seed: int = Field(1337, ge=0, lt=2**31)
    """Seed for weight initialisation, data order and sampling (below 2**31: NumPy's
    generators take 32 bits, and offsets are added to it)."""


PRETRAINED_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "*.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "config.json",  # names the tokenizer's class where tokenizer_config.json does not
    "generation_config.json",  # the ids that end a turn
)
"""The files of a pretrained tokenizer's directory that transformers reads."""


TEXT_KINDS = ("char", "bpe", "unigram")
"""Tokenizer kinds made from the training text (their `sources`)."""


class Tokenizer(SpecModel):
    """How text becomes token ids."""

    kind: Literal["char", "byte", "bpe", "unigram", "pretrained"]
    """`char` (vocabulary from the training text), `byte` (256 byte values), `bpe`
    (byte-level BPE) or `unigram` trained on the cleaned training split, or `pretrained`
    from a local directory."""
    vocab_size: int | None = Field(None, ge=32, le=1_048_576)
    """Target vocabulary size of a trained `bpe` or `unigram` tokenizer (required for them)."""
    min_frequency: int = Field(2, ge=1)
    """Minimum pair frequency for a BPE merge."""
    path: str | None = content(None, slot="files", files=PRETRAINED_TOKENIZER_FILES)
    """For `pretrained`: a directory with tokenizer.json or a sentencepiece .model. Only its
    tokenizer's files count (a model directory's weights do not)."""
    sources: StrList | None = ref("text", None, slot="text:{name}", omitted="pretrain")
    """Sources whose training split trains the tokenizer; all pretrain-role sources when
    omitted."""
    bos_token: str = "<|bos|>"
    """Beginning-of-sequence special token (a pretrained tokenizer's own is used)."""
    eos_token: str = "<|eos|>"
    """End-of-sequence special token, placed between documents (a pretrained tokenizer's
    own is used)."""
    pad_token: str = "<|pad|>"
    """Padding special token (a pretrained tokenizer's own, or its eos, is used)."""
    mask_token: str | None = added(None)
    """Mask special token of masked-LM (`mlm`) pretraining; none when unset. A
    pretrained tokenizer's own (BERT's `[MASK]`) is used."""
    chat_template: str | None = None
    """Chat template: `chatml` (with <|im_start|>/<|im_end|> special tokens) or a Jinja
    template string. Unset: a pretrained tokenizer keeps its own, any other takes `chatml`."""

    @property
    def template(self) -> str:
        """The template a tokenizer made here takes (``chatml`` unless the spec says)."""
        return self.chat_template or "chatml"

    @property
    def reads_text(self) -> bool:
        """Whether the tokenizer is made from the training text (its `sources`)."""
        return self.kind in TEXT_KINDS

    @model_validator(mode="after")
    def _kind_fields(self) -> Tokenizer:
        trained = self.kind in ("bpe", "unigram")
        if trained and self.vocab_size is None:
            raise ValueError(f"vocab_size is required for kind = {self.kind!r}")
        if not trained and self.vocab_size is not None:
            raise ValueError(f"vocab_size does not apply to kind = {self.kind!r}")
        if (self.kind == "pretrained") != (self.path is not None):
            raise ValueError("path is required for kind = 'pretrained' and only for it")
        if self.sources is not None and not self.reads_text:
            raise ValueError(f"sources does not apply to kind = {self.kind!r}: it reads no text")
        if self.chat_template not in (None, "chatml"):
            _check_jinja(self.chat_template)
        return self


def _check_jinja(template: str) -> None:
    """A Jinja chat template that cannot be parsed is said at validate, as transformers
    would parse it (its loop controls, its ``generation`` tag), not when a chat is first
    rendered."""
    try:
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # transformers brings jinja2; without it, nothing renders anyway
        return
    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    try:
        env.parse(template)
    except TemplateSyntaxError as e:
        if "'generation'" in str(e) or "'endgeneration'" in str(e):
            return  # transformers' own tag around the assistant's part
        raise ValueError(
            f"chat_template is not a Jinja template: {e.message} (line {e.lineno}); give "
            '"chatml" or a template that parses'
        ) from None


_STYLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "norm": "layernorm",
        "activation": "gelu",
        "position": "learned",
        "bias": True,
        "tie_embeddings": True,
    },
    "llama": {
        "norm": "rmsnorm",
        "activation": "swiglu",
        "position": "rope",
        "bias": False,
        "tie_embeddings": False,
    },
    "bert": {
        "norm": "layernorm",
        "norm_eps": 1e-12,
        "activation": "gelu",
        "position": "learned",
        "bias": True,
        "tie_embeddings": True,
    },
}


class RopeScaling(SpecModel):
    """How rotary positions are stretched beyond the context the model was trained on."""

    kind: Literal["linear", "llama3"]
    """`linear` (positions divided by `factor`) or `llama3` (Llama 3.1's frequency-dependent
    scaling)."""
    factor: float = Field(gt=0)
    """Scaling factor."""
    low_freq_factor: float = Field(1.0, gt=0)
    """`llama3`: wavelengths above original_max_positions / low_freq_factor are divided by
    `factor`."""
    high_freq_factor: float = Field(4.0, gt=0)
    """`llama3`: wavelengths below original_max_positions / high_freq_factor are kept."""
    original_max_positions: PositiveInt = 8192
    """`llama3`: the context length the model was first trained with."""


Family = Literal["gpt2", "llama", "mistral", "qwen2", "qwen3", "bert"]


class Architecture(SpecModel):
    """The shape of the transformer. Fields a style implies default from that style."""

    style: Literal["gpt2", "llama", "bert"] = "gpt2"
    """`gpt2` (LayerNorm, GELU, learned positions, bias, tied embeddings), `llama`
    (RMSNorm, SwiGLU, RoPE, grouped-query attention, untied), or `bert`: an encoder
    (bidirectional attention, post-norm layers, token types, a LayerNorm on the
    embeddings, norm_eps 1e-12), trained by `mlm` stages; sets the defaults below."""
    layers: PositiveInt
    """Number of transformer layers."""
    hidden: PositiveInt
    """Hidden size."""
    heads: PositiveInt
    """Number of attention heads."""
    kv_heads: PositiveInt | None = None
    """Number of key/value heads (grouped-query attention); defaults to `heads`."""
    ffn_hidden: PositiveInt | None = None
    """Hidden size of the MLP; defaults to 4 x hidden (gpt2) or ~8/3 x hidden rounded up to
    a multiple of 64 (llama)."""
    seq_len: PositiveInt
    """Context length in tokens."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalisation layer."""
    norm_eps: float = Field(1e-5, gt=0)
    """Epsilon of the normalisation layers."""
    activation: Literal["gelu", "gelu_tanh", "swiglu", "relu", "squared_relu"] = "gelu"
    """MLP activation (`gelu_tanh`: GELU's tanh approximation, GPT-2's `gelu_new`)."""
    position: Literal["learned", "rope"] = "learned"
    """Position embedding: learned absolute positions or rotary (RoPE)."""
    rope_base: float = Field(10000.0, gt=0)
    """RoPE base frequency (theta)."""
    bias: bool = True
    """Whether linear layers have biases."""
    norm_bias: bool = added(True)
    """Whether the LayerNorms have biases (`gpt2` style only; RMSNorm has none). `false`
    with `bias = false` is nanoGPT's `bias = False`; exports write GPT-2's LayerNorm
    biases as zeros."""
    tie_embeddings: bool = True
    """Whether the output layer shares the input embedding's weights."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout probability of hidden states and attention."""
    init_std: float = Field(0.02, gt=0)
    """Standard deviation of the weight initialisation."""
    vocab_multiple: PositiveInt = 128
    """The embedding table is padded to a multiple of this many rows."""
    family: Family | None = added(None)
    """The Hugging Face model family the weights map to: exports write it, imports of a
    checkpoint set it. The style's own (`gpt2` or `llama`) when unset."""
    head_dim: PositiveInt | None = added(None)
    """Size of each attention head; hidden / heads when unset."""
    qkv_bias: bool | None = added(None)
    """Biases on the query, key and value projections alone (Qwen2); as `bias` when unset."""
    qk_norm: bool = added(False)
    """RMS-normalise each head's queries and keys before the rotary embedding (Qwen3)."""
    rope_scaling: RopeScaling | None = added(None)
    """Rotary position scaling (Llama 3.1's `llama3`, or `linear`); none when unset."""
    vocab_size: PositiveInt | None = added(None)
    """Rows of the embedding table before padding (a checkpoint's); the tokenizer's
    vocabulary when unset. A tokenizer with more tokens than this is an error."""
    max_positions: PositiveInt | None = added(None)
    """Positions the model supports (the size of a learned position table; exported as
    `max_position_embeddings`); seq_len when unset. Training may use a shorter seq_len."""
    sliding_window: PositiveInt | None = added(None)
    """Attention window of a Mistral-style model; seq_len may not exceed it."""
    type_vocab_size: PositiveInt | None = added(None)
    """Token types of an encoder (`bert`: a text is type 0, its pair type 1); 2 when
    unset."""

    @model_validator(mode="before")
    @classmethod
    def _style_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        style = data.get("style", "gpt2")
        filled = dict(_STYLE_DEFAULTS.get(style, _STYLE_DEFAULTS["gpt2"]))
        filled.update(data)
        heads, hidden = filled.get("heads"), filled.get("hidden")
        if "kv_heads" not in filled and isinstance(heads, int):
            filled["kv_heads"] = heads
        if "ffn_hidden" not in filled and isinstance(hidden, int) and hidden > 0:
            if style == "llama":
                filled["ffn_hidden"] = -(-(8 * hidden // 3) // 64) * 64
            else:
                filled["ffn_hidden"] = 4 * hidden
        return filled

    @property
    def head_size(self) -> int:
        """The size of each attention head."""
        return self.head_dim or self.hidden // self.heads

    @property
    def positions(self) -> int:
        """Rows of the position table (learned) or the supported context (rotary)."""
        return self.max_positions or self.seq_len

    @property
    def model_family(self) -> str:
        return self.family or self.style

    @property
    def encoder(self) -> bool:
        """Whether the model reads its whole input at once (bidirectional attention)."""
        return self.style == "bert"

    @property
    def token_types(self) -> int:
        """Rows of an encoder's token-type table (none for a decoder)."""
        return (self.type_vocab_size or 2) if self.encoder else 0

    @property
    def qkv_biased(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @model_validator(mode="after")
    def _positions(self) -> Architecture:
        if self.max_positions is not None and self.seq_len > self.max_positions:
            raise ValueError(
                f"seq_len ({self.seq_len}) exceeds max_positions ({self.max_positions}), the "
                "context the model supports"
            )
        if self.encoder and (
            self.position != "learned" or not self.tie_embeddings or self.norm != "layernorm"
        ):
            raise ValueError(
                "style = 'bert' has learned positions, LayerNorm and tied embeddings "
                "(position = 'learned', norm = 'layernorm', tie_embeddings = true)"
            )
        if not self.norm_bias and self.style != "gpt2":
            raise ValueError(
                f"norm_bias = false applies to style = 'gpt2' only, not {self.style!r}"
            )
        if not self.norm_bias and self.norm != "layernorm":
            raise ValueError("norm_bias = false: RMSNorm has no biases to remove")
        if self.type_vocab_size is not None and not self.encoder:
            raise ValueError("type_vocab_size applies to style = 'bert' only")
        if self.sliding_window is not None and self.seq_len > self.sliding_window:
            raise ValueError(
                f"seq_len ({self.seq_len}) exceeds sliding_window ({self.sliding_window}): "
                "windowed attention is not supported, train at seq_len <= sliding_window"
            )
        return self


class Parallelism(SpecModel):
    """How training is laid out on devices. Execution only: never changes what is built."""

    tensor: PositiveInt = marked("execution", 1)
    """Tensor-parallel size."""
    pipeline: PositiveInt = marked("execution", 1)
    """Pipeline-parallel size."""
    data: PositiveInt = marked("execution", 1)
    """Data-parallel size."""
    micro_batch: PositiveInt = marked("execution", 1)
    """Sequences per rank per forward pass; the global batch is reached by gradient
    accumulation."""
    sequence_parallel: bool = marked("execution", False)
    """Sequence parallelism (with tensor > 1, which must divide seq_len): the activations
    outside attention and MLP are split along the sequence over the tensor-parallel ranks,
    saving their memory. Used by pretrain, sft and dpo stages without adapters; other
    stages train without it."""
    recompute: Literal["none", "full", "selective"] = marked("execution", "none")
    """Activation recomputation, trading compute for memory: `full` re-runs every layer
    in backward (not for LoRA adapters, nor bf16 on a CPU), `selective` only the core
    attention (whose activations grow with the square of the sequence)."""
    distributed_optimizer: bool = marked("execution", False)
    """Shard the optimizer state (Adam's moments) over the data-parallel ranks with
    megatron's distributed optimizer: gradients are reduce-scattered, each rank updates
    its shard, and the parameters are all-gathered. Less memory per rank, the same
    training to float rounding (the gradient norm that clipping divides by is summed in
    another order). Each data-parallel rank then checkpoints its own shard; a checkpoint
    resumes only with the setting it was written with."""
    device: Literal["auto", "cpu", "gpu"] = marked("execution", "auto")
    """Where ranks run: `gpu` when the cluster has GPUs under `auto`."""
    cpus_per_rank: PositiveInt | None = marked("execution", None)
    """CPUs requested for each rank, and the torch threads it computes with. Unset: this
    machine's cores shared by the ranks (a lone rank takes them all; more ranks than
    cores run on the local cluster a build starts, a thread each). Results are
    bit-identical for the same layout and thread count; other thread counts agree to
    float rounding."""

    def rank_cpus(self, cores: int | None = None) -> int:
        """The CPUs (and threads) of each rank."""
        if self.cpus_per_rank is not None:
            return self.cpus_per_rank
        import os

        return max(1, (cores or os.cpu_count() or 1) // self.world_size)

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline * self.data


_PATCH_ADDED = ("norm_bias",)
"""Architecture fields added after a stage's patch entered node keys with every field, an
unset one as None: these stay out of a patch's key while unset, so that no key changes."""


def _patch_model() -> type[SpecModel]:
    """``Architecture`` with every field optional: a stage's changes to the spec's."""
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for name, f in Architecture.model_fields.items():
        if name in _PATCH_ADDED:  # out of keys while unset, as in the architecture
            fields[name] = (f.annotation | None, added(None, description=f.description))
        else:
            fields[name] = (f.annotation | None, Field(None, description=f.description))
    return create_model(  # type: ignore[call-overload]
        "ArchitecturePatch",
        __base__=SpecModel,
        __doc__="Fields of `[architecture]` this stage sets to its own values.",
        **fields,
    )


ArchitecturePatch = _patch_model()


def patched(arch: Architecture, patch: Any) -> Architecture:
    """``arch`` with a stage's changes (fields a style implies follow the new style)."""
    if patch is None:
        return arch
    changes = {k: v for k, v in patch.model_dump(mode="json").items() if v is not None}
    if not changes:
        return arch
    base = arch.model_dump(mode="json")
    if changes.get("style", arch.style) != arch.style:  # the new style's defaults, not the old's
        for field in {f for implied in _STYLE_DEFAULTS.values() for f in implied} | {
            "family",
            "norm_bias",
        }:
            base.pop(field, None)
    if "hidden" in changes or "style" in changes:
        base.pop("ffn_hidden", None)  # derived from hidden unless set
    if "heads" in changes:
        base.pop("kv_heads", None)
    return Architecture.model_validate({**base, **changes})
