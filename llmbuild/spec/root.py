"""The root of the spec: one model per top-level table, and the section map the loader uses."""

from __future__ import annotations

from typing import Any

from pydantic import Field, TypeAdapter

from llmbuild.spec.base import SpecModel, StrList, marked
from llmbuild.spec.data import Data
from llmbuild.spec.model import Architecture, ModelInfo, Parallelism, Tokenizer
from llmbuild.spec.outputs import EvalSuite, Export
from llmbuild.spec.stages import Stage


class Spec(SpecModel):
    """A model spec: everything needed to produce a model."""

    extends: StrList = marked("label", ())
    """Presets (`@gpt2-tiny`, from specs/) or relative paths of spec fragments merged
    under this file: tables merge, arrays of tables replace."""
    model: ModelInfo
    """Name and seed of the model."""
    data: Data
    """Data sources, cleaning and split."""
    tokenizer: Tokenizer
    """The tokenizer."""
    architecture: Architecture
    """The transformer's shape."""
    parallelism: Parallelism = Parallelism()
    """Device layout of training (execution only)."""
    stage: tuple[Stage, ...] = Field(min_length=1)
    """Training stages, as `[[stage]]` tables, in any order; `from` links them."""
    eval: tuple[EvalSuite, ...] = ()
    """Evaluation suites, as `[[eval]]` tables."""
    export: tuple[Export, ...] = ()
    """Export targets, as `[[export]]` tables."""

    def stage_named(self, name: str) -> Any:
        return next(s for s in self.stage if s.name == name)

    def source_named(self, name: str) -> Any:
        return next(s for s in self.data.sources if s.name == name)


# How the loader validates each top-level table: a type, and whether the table is an
# array whose items are validated one by one (so one bad item hides nothing else).
SECTIONS: dict[str, tuple[Any, bool]] = {
    "extends": (StrList, False),
    "model": (ModelInfo, False),
    "data": (Data, False),
    "tokenizer": (Tokenizer, False),
    "architecture": (Architecture, False),
    "parallelism": (Parallelism, False),
    "stage": (Stage, True),
    "eval": (EvalSuite, True),
    "export": (Export, True),
}
REQUIRED_SECTIONS = ("model", "data", "tokenizer", "architecture", "stage")

_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def section_adapter(section: str) -> TypeAdapter[Any]:
    if section not in _ADAPTERS:
        _ADAPTERS[section] = TypeAdapter(SECTIONS[section][0])
    return _ADAPTERS[section]
