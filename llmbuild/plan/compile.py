"""Compile a resolved spec into the build graph. Pure: nothing is read or run.

    source:<name> -> tokenize:<name> -> stage:<name> -> eval:<suite>@<stage>
          \\-> tokenizer ---^                      \\-> export:<format>@<stage>

Each node gets the slice of the spec its backend reads, as that backend's ``Config``,
and explicit named references to the nodes it reads.
"""

from __future__ import annotations

from typing import Any

from llmbuild.backends.data.config import DataConfig
from llmbuild.backends.eval.config import EvalConfig
from llmbuild.backends.export.config import ExportConfig
from llmbuild.backends.megatron.config import TrainConfig
from llmbuild.backends.tokenize.config import TokenizeConfig
from llmbuild.backends.tokenizer.config import TokenizerConfig
from llmbuild.plan.graph import External, Graph, Node
from llmbuild.registry import Registry, default_registry
from llmbuild.spec.checks import adapter_only, export_node_name
from llmbuild.spec.root import Spec


class _Builder:
    def __init__(self, spec: Spec, registry: Registry) -> None:
        self.spec = spec
        self.registry = registry
        self.nodes: list[Node] = []

    def add(
        self,
        name: str,
        kind: str,
        backend_name: str,
        config: Any,
        inputs: dict[str, str] | None = None,
        external: tuple[External, ...] = (),
        cutoff: bool = False,
        labels: dict[str, str] | None = None,
    ) -> None:
        backend = self.registry.get(backend_name)
        self.nodes.append(
            Node(
                name=name,
                kind=kind,
                backend=backend.name,
                backend_version=backend.version,
                config=config,
                inputs=inputs or {},
                external=external,
                resources=backend.resources(config),
                cutoff=cutoff,
                labels=labels or {},
            )
        )

    def pretrain_sources(self) -> list[str]:
        """The sources a stage, tokenizer or perplexity suite reads when it names none."""
        return [s.name for s in self.spec.data.sources if s.role == "pretrain"]

    def sources(self) -> None:
        data = self.spec.data
        for i, src in enumerate(data.sources):
            config = DataConfig(
                source=src, clean=data.clean, split=data.split, shard_mb=data.shard_mb
            )
            files = External("files", src.path, ("data", "sources", i, "path"))
            self.add(
                f"source:{src.name}",
                "source",
                "data",
                config,
                external=(files,),
                cutoff=True,
                labels={
                    "source": f"data.sources.{src.name}",
                    "clean": "data.clean",
                    "split": "data.split",
                    "shard_mb": "data.shard_mb",
                },
            )

    def tokenizer(self) -> None:
        tok = self.spec.tokenizer
        inputs, external = {}, ()
        if tok.kind in ("char", "bpe", "unigram"):
            names = tok.sources or self.pretrain_sources()
            inputs = {f"text:{n}": f"source:{n}" for n in names}
        if tok.kind == "pretrained" and tok.path is not None:
            external = (External("files", (tok.path,), ("tokenizer", "path")),)
        self.add(
            "tokenizer",
            "tokenizer",
            "tokenizer",
            TokenizerConfig(tokenizer=tok),
            inputs=inputs,
            external=external,
            cutoff=True,
        )
        for src in self.spec.data.sources:
            self.add(
                f"tokenize:{src.name}",
                "tokenize",
                "tokenize",
                TokenizeConfig(source=src.name, role=src.role),
                inputs={"documents": f"source:{src.name}", "tokenizer": "tokenizer"},
                cutoff=True,
                labels={"role": f"data.sources.{src.name}.role"},
            )

    def stages(self) -> None:
        # Stages may be written in any order: emit each after the stage it starts from.
        pending = {s.name: s for s in self.spec.stage}
        done: set[str] = set()
        while pending:
            ready = [s for s in pending.values() if s.from_ is None or s.from_ in done]
            ready = [s for s in ready if getattr(s, "reference", None) in (None, *done)]
            ready = [
                s
                for s in ready
                if all(r.stage in done for r in getattr(s, "rewards", ()) if r.kind == "model")
            ]
            for stage in ready:
                self.stage(stage)
                done.add(stage.name)
                del pending[stage.name]

    def model_inputs(self, slot: str, name: str) -> dict[str, str]:
        """A stage's weights as an input, with its base (as ``<slot>_base``) when the stage
        holds only LoRA adapters."""
        inputs = {slot: f"stage:{name}"}
        stage = self.spec.stage_named(name)
        if adapter_only(stage.model_dump(by_alias=True)):
            inputs[f"{slot}_base"] = f"stage:{stage.from_}"
        return inputs

    def stage(self, stage: Any) -> None:
        spec = self.spec
        if stage.kind == "pretrain":
            names = stage.data or self.pretrain_sources()
            mixture = {n: spec.source_named(n).weight for n in names}
        else:
            names, mixture = [stage.data], {}
        inputs = {"tokenizer": "tokenizer"}
        inputs.update({f"data:{n}": f"tokenize:{n}" for n in names})
        if stage.from_:
            inputs.update(self.model_inputs("from", stage.from_))
        if getattr(stage, "reference", None):
            inputs.update(self.model_inputs("reference", stage.reference))
        for i, reward in enumerate(getattr(stage, "rewards", ())):
            if reward.kind == "model":
                inputs.update(self.model_inputs(f"reward:{i}", reward.stage))
        config = TrainConfig(
            stage=stage,
            architecture=spec.architecture,
            seed=spec.model.seed,
            mixture=mixture,
            parallelism=spec.parallelism,
        )
        self.add(
            f"stage:{stage.name}",
            "stage",
            "megatron",
            config,
            inputs=inputs,
            labels={
                "stage": f"stage.{stage.name}",
                "architecture": "architecture",
                "seed": "model.seed",
                "mixture": "data.sources.{}.weight",
            },
        )

    def evals(self) -> None:
        for i, suite in enumerate(self.spec.eval):
            for stage in suite.stages:
                inputs = {**self.model_inputs("model", stage), "tokenizer": "tokenizer"}
                if suite.kind == "perplexity":
                    names = suite.sources or self.pretrain_sources()
                    inputs.update({f"data:{n}": f"tokenize:{n}" for n in names})
                external = []
                if getattr(suite, "files", ()):
                    external.append(External("files", suite.files, ("eval", i, "files")))
                if getattr(suite, "include_path", None):
                    external.append(
                        External("tasks", (suite.include_path,), ("eval", i, "include_path"))
                    )
                self.add(
                    f"eval:{suite.name}@{stage}",
                    "eval",
                    "eval",
                    EvalConfig(suite=suite, stage=stage),
                    inputs=inputs,
                    external=tuple(external),
                    labels={"suite": f"eval.{suite.name}"},
                )

    def exports(self) -> None:
        for export in self.spec.export:
            inputs = {**self.model_inputs("model", export.stage), "tokenizer": "tokenizer"}
            if export.format == "peft":
                inputs["base"] = f"stage:{self.spec.stage_named(export.stage).from_}"
            name = export_node_name(export.format, export.stage, export.name)
            self.add(
                name,
                "export",
                "export",
                ExportConfig(export=export),
                inputs=inputs,
                labels={"export": name.replace("export:", "export.", 1)},
            )


def compile_plan(spec: Spec, registry: Registry | None = None) -> Graph:
    """The build graph of a validated spec, in topological order."""
    builder = _Builder(spec, registry or default_registry())
    builder.sources()
    builder.tokenizer()
    builder.stages()
    builder.evals()
    builder.exports()
    return Graph(builder.nodes)
