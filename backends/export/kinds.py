"""The export formats: hf, peft, onnx and gguf, each run by the ``export`` backend.
Registered through the ``llmbuild.kinds`` entry point."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.export.config import ExportConfig
from llmbuild.backends.export.spec import FORMATS, PeftExport
from llmbuild.backends.megatron.kinds import SCORING

from llmbuild.errors import Path, Problem
from llmbuild.kinds import Kind, NodeRefs, SpecView
from llmbuild.spec.tables import node_name


class ExportKind(Kind):
    def __init__(self, model: Any) -> None:
        super().__init__(model, "export")

    def config(self, item: Any, spec: Any, refs: NodeRefs) -> ExportConfig:
        # Only a GGUF file carries the model's and the stage's names: renaming either
        # rebuilds no other export.
        if item.format != "gguf":
            return ExportConfig(export=item)
        return ExportConfig(export=item, model_name=spec.model.name, finetune=item.stage)

    def omitted(self, item: Any, spec: Any, field: str, names: list[str]) -> list[str]:
        # A classifier's or reward model's export measures no held-out perplexity.
        stage = next((s for s in spec.stage if s.name == item.stage), None)
        return [] if field == "sources" and getattr(stage, "kind", None) in SCORING else names

    def labels(self, item: Any) -> dict[str, str]:
        return {"export": node_name("export", item).replace("export:", "export.", 1)}

    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        from llmbuild.backends.megatron.kinds import is_encoder, view_architecture

        stage = view.stages.get(item.stage)
        kind = getattr(stage, "kind", None)
        classifier = kind in SCORING
        scaling = getattr(view_architecture(view, item.stage), "rope_scaling", None)
        if item.format == "gguf" and scaling is not None:  # found before anything trains
            return [
                Problem(
                    f"{item.stage!r} has rope scaling ({scaling.kind}), which the GGUF export "
                    "does not write yet: export it as hf",
                    (*where, "format"),
                )
            ]
        arch = view_architecture(view, item.stage)
        window = getattr(arch, "sliding_window", None)
        positions = getattr(arch, "max_positions", None) or getattr(arch, "seq_len", 0)
        if item.format == "gguf" and window is not None and window < positions:
            return [  # llama.cpp's llama architecture attends to the whole context
                Problem(
                    f"{item.stage!r} attends through a sliding window of {window} tokens of "
                    f"its {positions} positions, which the GGUF export does not write (a "
                    "runtime would attend to every earlier token and answer otherwise past "
                    "the window): export it as hf or onnx",
                    (*where, "format"),
                )
            ]
        if not classifier and item.format != "hf" and is_encoder(view, item.stage):
            return [
                Problem(
                    f"{item.stage!r} is a bert-style encoder, which exports as hf "
                    f"(BertForMaskedLM), or once classified as hf or onnx; not as {item.format}",
                    (*where, "format"),
                )
            ]
        if classifier and getattr(item, "sources", None) is not None:
            return [
                Problem(
                    f"{item.stage!r} is a {SCORING[kind]}, whose export measures no held-out "
                    "perplexity: leave `sources` out",
                    (*where, "sources"),
                )
            ]
        if item.format in CLASSIFIER_FORMATS or not classifier:
            return []
        return [
            Problem(
                f"{item.stage!r} is a {SCORING[kind]}, which exports as "
                f"{' or '.join(CLASSIFIER_FORMATS)} (a sequence classifier with its "
                f"{'value' if kind == 'reward' else 'class'} head), not as {item.format}",
                (*where, "format"),
            )
        ]


CLASSIFIER_FORMATS = ("hf", "onnx")
"""The formats a classify or reward stage exports to: transformers' sequence classifier,
and ONNX of it."""


class PeftKind(ExportKind):
    def check(self, item: Any, where: Path, view: SpecView) -> list[Problem]:
        from llmbuild.backends.megatron.kinds import is_encoder

        stage = view.stages.get(item.stage)
        if getattr(stage, "kind", None) in SCORING or is_encoder(view, item.stage):
            return super().check(item, where, view)
        if stage is not None and not stage.has_adapters:
            return [
                Problem(
                    f"a peft export needs a stage with LoRA adapters; {item.stage!r} has none",
                    (*where, "stage"),
                )
            ]
        return []


KINDS = tuple(PeftKind(m) if m is PeftExport else ExportKind(m) for m in FORMATS)
