"""A training stage's artifact, written by ``run.py`` and read only through this module:
``config.json`` (architecture, vocabulary, what the stage holds), ``model.safetensors``
(full canonical weights), ``adapter.safetensors`` (LoRA stages) and
``value_head.safetensors`` (reward models) and ``classifier.safetensors`` with the label
names in ``config.json`` (classifiers).

A stage that holds only adapters knows its base: the artifact it was trained from, found
through its record, so nodes that read such a stage need no second input for the base."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbuild.errors import UserError

if TYPE_CHECKING:
    from llmbuild.run.context import InputArtifact

CONFIG = "config.json"
MODEL = "model.safetensors"
ADAPTER = "adapter.safetensors"
VALUE_HEAD = "value_head.safetensors"
CLASSIFIER = "classifier.safetensors"
WEIGHT_FILES = (MODEL, ADAPTER, VALUE_HEAD, CLASSIFIER)


@dataclass(frozen=True)
class StageArtifact:
    """A built stage, opened from a node input (or from the store by the CLI)."""

    artifact: InputArtifact

    @classmethod
    def open(cls, artifact: InputArtifact) -> StageArtifact:
        if not (artifact.path / CONFIG).is_file():
            raise UserError(f"{artifact.node} is not a trained stage (it has no {CONFIG})")
        return cls(artifact)

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def node(self) -> str:
        return self.artifact.node

    @cached_property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG).read_text())

    @property
    def name(self) -> str:
        """The stage's name."""
        return self.config["stage"]

    @cached_property
    def architecture(self) -> Any:
        from llmbuild.spec.model import Architecture

        return Architecture.model_validate(self.config["architecture"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def adapter(self) -> Any:
        """The LoRA adapter settings, when the stage trained adapters."""
        from llmbuild.backends.megatron.spec import LoraAdapter

        raw = self.config.get("adapter")
        return LoraAdapter.model_validate(raw) if raw else None

    @property
    def adapters_only(self) -> bool:
        """Whether it holds only adapters (no merged full weights)."""
        return not (self.path / MODEL).exists()

    @cached_property
    def parent(self) -> StageArtifact | None:
        """The stage it was trained from, if any."""
        found = self.artifact.upstream("from")
        return StageArtifact.open(found) if found is not None else None

    @property
    def base(self) -> StageArtifact | None:
        """The stage whose weights the adapters apply to, when it holds only adapters."""
        if not self.adapters_only:
            return None
        if self.parent is None:
            raise UserError(f"{self.node} holds only LoRA adapters but records no base")
        return self.parent

    @property
    def dirs(self) -> tuple[Path, Path | None]:
        """Its directory and, when it holds only adapters, its base's."""
        base = self.base
        return self.path, base.path if base is not None else None

    def weights(self) -> dict[str, Any]:
        """Full canonical weights (the adapters merged into the base's when it holds only
        adapters)."""
        from llmbuild.backends.megatron.weights import load_stage

        return load_stage(*self.dirs)

    def adapters(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.path / ADAPTER))

    def value_head(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.path / VALUE_HEAD))

    @property
    def multi_label(self) -> bool:
        """Whether the classifier gives each text any number of its labels."""
        return bool(self.config.get("multi_label", False))

    @property
    def paired(self) -> bool | None:
        """Whether a classifier learned pairs of texts; None when its record predates
        saying so."""
        return self.config.get("paired")

    @property
    def labels(self) -> tuple[str, ...]:
        """A classifier's label names, in the order of its outputs; empty for other stages."""
        return tuple(self.config.get("labels", ()))

    @property
    def head_outputs(self) -> tuple[str, ...]:
        """What the stage's sequence head gives: a classifier's labels, a reward model's one
        score (``reward``); empty for other stages."""
        return ("reward",) if self.config.get("kind") == "reward" else self.labels

    def head(self) -> dict[str, Any]:
        """The sequence head by the classifier's canonical names (``classifier.score.*``): a
        classifier's, or a reward model's value head."""
        if self.config.get("kind") == "reward":
            return {
                f"classifier.{k.removeprefix('value_head.')}": v
                for k, v in self.value_head().items()
            }
        return self.classifier()

    def classifier(self) -> dict[str, Any]:
        """A classifier's head, by canonical name."""
        from safetensors.torch import load_file

        if not self.labels:
            raise UserError(f"{self.node} is not a classifier (a stage of kind classify)")
        return load_file(str(self.path / CLASSIFIER))

    def require_decoder(self, what: str) -> None:
        """A ``UserError`` when the stage is an encoder, which ``what`` cannot use."""
        from llmbuild.errors import UserError

        if self.architecture.encoder:
            raise UserError(
                f"{self.node} is a bert-style encoder: it fills in masked tokens and "
                f"classifies, but does not {what}"
            )

    def load_model(self) -> tuple[Any, dict[str, Any]]:
        """The stage's GPTModel on this machine (one rank), in eval mode, and its config."""
        from llmbuild.backends.megatron.generate import load_model

        return load_model(*self.dirs)

    def rank_ref(self) -> dict[str, str | None]:
        """Where its weights lie, for a training rank to load them (``weights.load_stage``)."""
        path, base = self.dirs
        return {"dir": str(path), "base": str(base) if base is not None else None}
