"""The ``prune`` stage kind, run by the ``prune`` backend. Registered through the
``llmbuild.kinds`` entry point."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.prune.config import PruneConfig
from llmbuild.backends.prune.spec import NARROWED, Prune

from llmbuild.errors import Path, Problem
from llmbuild.kinds import Kind, NodeRefs, SpecView


def _parent_architecture(view_or_spec: Any, stages: dict[str, Any], item: Any) -> Any:
    from llmbuild.backends.megatron.kinds import _chain_architecture

    return _chain_architecture(view_or_spec, stages, stages.get(item.from_))


class PruneKind(Kind):
    def __init__(self) -> None:
        super().__init__(Prune, "prune")

    def config(self, item: Any, spec: Any, refs: NodeRefs) -> PruneConfig:
        from llmbuild.backends.megatron.kinds import stage_architecture

        return PruneConfig(
            stage=item,
            architecture=stage_architecture(spec, item),
            mixture={n: spec.source_named(n).weight for n in refs.names("data")},
        )

    def labels(self, item: Any) -> dict[str, str]:
        return {
            "stage": f"stage.{item.name}",
            "architecture": "architecture",
            "mixture": "data.sources.{}.weight",
        }

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        from llmbuild.backends.megatron.kinds import SCORING, layout_problems
        from pydantic import ValidationError

        at = (*where, "architecture")
        changes = item.architecture.model_dump(exclude_none=True)
        others = sorted(set(changes) - set(NARROWED))
        if others:
            return [
                Problem(
                    f"pruning changes only {', '.join(NARROWED)}; not {', '.join(others)}",
                    (*at, others[0]),
                )
            ]
        if not changes:
            return [
                Problem("says nothing to prune: set fewer layers, heads, ffn_hidden or hidden", at)
            ]
        base = view.stages.get(item.from_ or "")
        if base is not None and base.kind in SCORING:
            return [
                Problem(
                    f"stage {base.name!r} is a {SCORING[base.kind]}: pruning ranks its parts "
                    "by next-token loss through its language-model head, which is its base's, "
                    f"untrained since, and the smaller model would have no {SCORING[base.kind]} "
                    f"head; prune the stage {base.name!r} was trained from, then train a "
                    f"{base.kind} stage from the pruned one",
                    (*where, "from"),
                )
            ]
        if base is not None and getattr(base, "adapters_only", False):
            return [
                Problem(
                    f"stage {base.name!r} holds only LoRA adapters; prune a stage with full "
                    f"weights (set merge = true on {base.name!r})",
                    (*where, "from"),
                )
            ]
        if view.architecture is None or item.from_ not in view.stages:
            return []
        try:
            parent = _parent_architecture(view.architecture, view.stages, item)
            if parent.encoder:
                return [Problem("pruning a bert-style encoder is not supported", (*where, "from"))]
            pruned = item.shape_from(parent)
        except ValidationError as e:  # located at the field, as validation says it
            from llmbuild.spec.model import Architecture
            from llmbuild.spec.validate import problems_of

            return problems_of(e, Architecture, at)
        except ValueError as e:
            return [Problem(f"the pruned architecture is invalid: {e}", at)]
        if all(getattr(pruned, f) == getattr(parent, f) for f in NARROWED):
            shape = ", ".join(f"{k} = {v}" for k, v in changes.items())
            return [
                Problem(
                    f"prunes nothing: the pruned stage already has {shape}",
                    (*at, next(iter(changes))),
                )
            ]
        out = []
        for field in NARROWED:
            new, old = getattr(pruned, field), getattr(parent, field)
            if field == "kv_heads" and field not in changes:
                continue  # follows heads: the heads' own problem says it
            if new > old:
                out.append(
                    Problem(f"{field} ({new}) exceeds the pruned stage's ({old})", (*at, field))
                )
        if pruned.heads * parent.kv_heads != pruned.kv_heads * parent.heads:
            out.append(
                Problem(
                    f"heads and kv_heads ({pruned.heads}, {pruned.kv_heads}) must keep the pruned "
                    f"stage's ratio ({parent.heads}, {parent.kv_heads}): whole query groups go",
                    (*at, "heads"),
                )
            )
        whole = parent.heads * parent.head_size == parent.hidden
        if (
            parent.position == "learned"
            and whole
            and pruned.heads * pruned.head_size != pruned.hidden
        ):
            out.append(
                Problem(
                    f"a gpt2-style model keeps heads x head size = hidden (GPT2LMHeadModel has "
                    f"no head size of its own): prune heads and hidden together, "
                    f"{parent.head_size} hidden channels per head",
                    (*at, "heads" if "heads" in changes else "hidden"),
                )
            )
        return out + layout_problems(pruned, view.parallelism, at)


KINDS = (PruneKind(),)
