"""The root of the spec: one model per top-level table. The ``[[stage]]``, ``[[eval]]``
and ``[[export]]`` arrays are unions of the registered kinds, so the model of a whole spec
is built from a registry (``spec_model``), as are the section adapters the loader uses."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, create_model

from llmbuild.spec.base import SpecModel, StrList, marked
from llmbuild.spec.data import Data
from llmbuild.spec.model import Architecture, ModelInfo, Parallelism, Tokenizer
from llmbuild.spec.tables import TABLES, TAG, EvalTable, ExportTable, StageTable, Table

TABLE_DOCS: dict[Table, str] = {
    "stage": "Training stages, as `[[stage]]` tables, in any order; `from` links them.",
    "eval": "Evaluation suites, as `[[eval]]` tables.",
    "export": "Export targets, as `[[export]]` tables.",
}


class Spec(SpecModel):
    """A model spec: everything needed to produce a model."""

    extends: StrList = marked("label", ())
    """Presets (`@gpt2-tiny`, shipped with llmbuild) or relative paths of spec fragments
    merged under this file: tables merge, arrays of tables replace."""
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
    stage: tuple[StageTable, ...] = Field(min_length=1)
    """Training stages, as `[[stage]]` tables, in any order; `from` links them."""
    eval: tuple[EvalTable, ...] = ()
    """Evaluation suites, as `[[eval]]` tables."""
    export: tuple[ExportTable, ...] = ()
    """Export targets, as `[[export]]` tables."""

    def stage_named(self, name: str) -> Any:
        return next(s for s in self.stage if s.name == name)

    def source_named(self, name: str) -> Any:
        return next(s for s in self.data.sources if s.name == name)


def table_union(registry: Any, table: Table) -> Any:
    """The discriminated union of a table's registered kinds."""
    models = tuple(k.model for k in registry.kinds(table).values())
    if not models:
        return {"stage": StageTable, "eval": EvalTable, "export": ExportTable}[table]
    return Annotated[Union[models], Field(discriminator=TAG[table])]


def spec_model(registry: Any = None) -> type[Spec]:
    """The model of a whole spec with the registry's kinds (built once per registry)."""
    if registry is None:
        from llmbuild.registry import default_registry

        registry = default_registry()
    if "spec" not in registry.cache:
        fields: dict[str, Any] = {}
        for table in TABLES:
            tp = tuple[table_union(registry, table), ...]  # type: ignore[valid-type]
            if table == "stage":
                default = Field(min_length=1, description=TABLE_DOCS[table])
            else:
                default = Field((), description=TABLE_DOCS[table])
            fields[table] = (tp, default)
        registry.cache["spec"] = create_model(  # type: ignore[call-overload]
            "Spec", __base__=Spec, __doc__=Spec.__doc__, **fields
        )
    return registry.cache["spec"]


def sections(registry: Any = None) -> dict[str, tuple[Any, bool]]:
    """How the loader validates each top-level table: a type, and whether the table is an
    array whose items are validated one by one (so one bad item hides nothing else)."""
    out: dict[str, tuple[Any, bool]] = {}
    for name, f in spec_model(registry).model_fields.items():
        is_array = name in TABLES
        out[name] = (f.annotation.__args__[0] if is_array else f.annotation, is_array)
    return out


REQUIRED_SECTIONS = ("model", "data", "tokenizer", "architecture", "stage")


def section_adapter(section: str, registry: Any = None) -> TypeAdapter[Any]:
    if registry is None:
        from llmbuild.registry import default_registry

        registry = default_registry()
    adapters = registry.cache.setdefault("adapters", {})
    if section not in adapters:
        adapters[section] = TypeAdapter(sections(registry)[section][0])
    return adapters[section]
