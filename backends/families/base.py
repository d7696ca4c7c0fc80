"""What a family folder provides, assembled into one object (``FAMILY`` in each folder's
``__init__.py``), and the conversions every family shares."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmbuild.backends.families.mapping import Converter, Rule, Shapes, to_hf


@dataclass(frozen=True)
class Gguf:
    """A family's GGUF form: llama.cpp's architecture, and how q/k rows are laid out."""

    arch: str
    """gguf-py's ``MODEL_ARCH`` member name (``LLAMA``, ``QWEN2``, ``GPT2``, ...)."""
    permute_qk: bool = False
    """llama.cpp's llama rope wants q/k rows interleaved (what its converter's
    ``LlamaModel.permute`` does); NeoX-style families keep transformers' layout."""
    conv1d: tuple[str, ...] = ()
    """HF weights stored transposed (GPT-2's Conv1D), written untransposed."""
    tied_output: bool = False
    """Write a tied output layer as its own tensor (llama.cpp's GPT-2 wants one)."""


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    """``model_type`` in ``config.json``."""
    hf_class: str
    """The ``transformers`` causal-LM class its checkpoints are."""
    style: str
    """Our architecture style it refines (``gpt2`` or ``llama``)."""
    architecture: Callable[[dict[str, Any], str], dict[str, Any]]
    """``config.json`` -> our architecture table (raises ``Unsupported``)."""
    hf_config: Callable[[Any, int, dict[str, int]], Any]
    """(architecture, vocabulary, special ids) -> the ``transformers`` config."""
    rules: Callable[[Any], list[Rule]]
    """The tensor rules for an architecture."""
    gguf: Gguf | None
    """None for a family llama.cpp does not run (an encoder)."""
    adapter_modules: dict[str, tuple[str, ...]]
    """LoRA target (qkv, proj, fc1, fc2) -> the HF modules it becomes (PEFT)."""
    layer_prefix: str
    """HF name prefix of layer ``{}``."""
    ignored: tuple[str, ...] = field(default=())
    """Patterns of checkpoint tensors that are not weights (buffers some writers save)."""
    auto_class: str = "AutoModelForCausalLM"
    """The ``transformers`` auto class that loads ``hf_class`` (and gives the logits the
    conversions are proven against)."""
    tied: tuple[str, ...] = ("lm_head.weight",)
    """transformers' names of tensors tied to another when embeddings are tied."""
    lm_head: tuple[str, ...] = ("lm_head.",)
    """Prefixes of the language-model head, which a sequence classifier lacks."""
    classifier_names: dict[str, str] = field(
        default_factory=lambda: {"classifier.score.weight": "score.weight"}
    )
    """Our classifier head's tensors -> ``<Family>ForSequenceClassification``'s."""

    def auto_model(self) -> Any:
        """The ``transformers`` auto class of the family's checkpoints."""
        import transformers

        return getattr(transformers, self.auto_class)

    def to_hf(self, state: dict[str, Any], arch: Any, vocab: int) -> dict[str, Any]:
        """Our canonical weights -> the family's HF state dict (vocabulary rows only)."""
        shapes = Shapes.of(arch, vocab, state["embedding.word_embeddings.weight"].shape[0])
        return to_hf(self.rules(arch), arch.layers, state, shapes)

    def converter(self, arch: Any, vocab: int, padded: int) -> Converter:
        """Feeds HF tensors (shard by shard) and gives our canonical weights."""
        return Converter(self.rules(arch), arch.layers, Shapes.of(arch, vocab, padded))

    def is_ignored(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.ignored)
