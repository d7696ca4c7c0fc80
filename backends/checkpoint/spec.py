"""The spec model of the ``import`` stage kind: a Hugging Face checkpoint as a stage.
Torch-free: the planner imports it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmbuild.spec.base import content, marked
from llmbuild.spec.tables import StageTable

CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
)
"""The files of a checkpoint directory an import reads (its tokenizer's are the tokenizer
node's)."""


class Import(StageTable):
    """A Hugging Face checkpoint as a stage: its weights converted to ours and proven
    against transformers' own logits before the stage is committed. Its `config.json`
    fills `[architecture]`, and its tokenizer is the spec's unless the spec has a
    `[tokenizer]` table of its own (one with a `kind`; a table without sets the
    checkpoint tokenizer's `chat_template`)."""

    kind: Literal["import"]
    """Stage kind."""
    checkpoint: str = content(slot="files", files=CHECKPOINT_FILES, min_length=1)
    """A local Hugging Face model directory (config.json, safetensors weights, tokenizer
    files), relative to the spec file; or `hf://<org>/<name>` or `hf://<org>/<name>@<rev>`:
    a Hub model, resolved to its commit and downloaded into the Hugging Face cache. Only
    the content of the files it reads counts (config.json, generation_config.json, the
    weights and their index), never the path or the id, nor a README or an `original/`
    folder beside them."""
    hub: str | None = marked("label", None)
    """Set by llmbuild for a Hub checkpoint: the id and the commit it resolved to."""
    allow_pickle: bool = False
    """Read `.bin` (pickle) weights, with `torch.load(weights_only=True)`; refused
    otherwise, since a pickle can run code."""
    tolerance: float = Field(1e-4, gt=0)
    """Largest difference allowed between our logits and transformers' (float32)."""
