"""The front of every graph, from the fixed tables: ``source:<name>`` (read, clean, split)
-> ``tokenizer`` -> ``tokenize:<name>``, and the configs of those nodes (their backends,
``data``, ``tokenizer`` and ``tokenize``, take them from here)."""

from __future__ import annotations

from typing import Any

from llmbuild.spec.base import Name, SourceRole, SpecModel, marked
from llmbuild.spec.data import Clean, Source, Split
from llmbuild.spec.model import Tokenizer
from llmbuild.spec.references import walk


class DataConfig(SpecModel):
    """One data source with the cleaning and split applied to it."""

    source: Source
    """The source (its mixture weight belongs to the training stages, not here)."""
    clean: Clean
    """Normalisation, filtering and deduplication."""
    split: Split
    """The train/validation split."""
    shard_mb: int
    """Upper bound in MB of each output shard."""


class TokenizerConfig(SpecModel):
    """The tokenizer to train or load."""

    tokenizer: Tokenizer
    """The `[tokenizer]` table (a pretrained tokenizer keeps its own chat template where
    it sets none)."""


class TokenizeConfig(SpecModel):
    """How one source's documents become token ids."""

    source: Name = marked("label")
    """Name of the source."""
    role: SourceRole
    """The source's role, which decides the output form (packed text, chat with masks,
    preference pairs, prompts)."""


def role_sources(spec: Any, role: str = "pretrain") -> list[str]:
    """The sources a reference left out stands for: every source of its ``omitted`` role."""
    return [s.name for s in spec.data.sources if s.role == role]


def front_nodes(spec: Any, add: Any) -> None:
    """Declare the source, tokenizer and tokenize nodes through ``add`` (see compile.py)."""
    data = spec.data
    for i, src in enumerate(data.sources):
        add(
            f"source:{src.name}",
            "source",
            "data",
            DataConfig(
                source=src.model_copy(update={"clean": None}),
                clean=src.clean or data.clean,
                split=data.split,
                shard_mb=data.shard_mb,
            ),
            item=src,
            path=("data", "sources", i),
            cutoff=True,
            labels={
                "source": f"data.sources.{src.name}",
                "clean": f"data.sources.{src.name}.clean" if src.clean else "data.clean",
                "split": "data.split",
                "shard_mb": "data.shard_mb",
            },
        )
    tok = spec.tokenizer
    inputs: dict[str, str] = {}
    if tok.reads_text:
        refs, omitted = walk(Tokenizer, tok.model_dump(mode="json", by_alias=True))
        inputs = {r.slot: r.node for r in refs}
        for o in omitted:
            inputs.update({o.slot(n): f"source:{n}" for n in role_sources(spec, o.mark.omitted)})
    add(
        "tokenizer",
        "tokenizer",
        "tokenizer",
        TokenizerConfig(tokenizer=tok),
        item=tok,
        path=("tokenizer",),
        inputs=inputs,
        cutoff=True,
    )
    for src in data.sources:
        add(
            f"tokenize:{src.name}",
            "tokenize",
            "tokenize",
            TokenizeConfig(source=src.name, role=src.role),
            inputs={"documents": f"source:{src.name}", "tokenizer": "tokenizer"},
            cutoff=True,
            labels={"role": f"data.sources.{src.name}.role"},
        )
