"""An out-of-tree package, as a third party would write it: a new stage kind with a
reference field (``merge``: the average of two stages, ``from`` and ``other``) and a new
export format (``manifest``), each with its backend, registered through entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

DIST = "llmbuild_plugin_example"

MODULE = '''
"""Merge two stages; export a manifest. Registered through entry points."""

import json
from typing import Literal

from pydantic import BaseModel

from llmbuild.backend import Backend
from llmbuild.kinds import Kind
from llmbuild.spec.base import Name, SpecModel, ref
from llmbuild.spec.tables import ExportTable, StageTable


class Merge(StageTable):
    """The average of two stages' weights."""

    kind: Literal["merge"]
    """Stage kind."""
    from_: Name = ref("stage", alias="from")
    """The first stage."""
    other: Name = ref("stage")
    """The second stage."""
    weight: float = 0.5
    """Weight of `other` in the average."""


class Manifest(ExportTable):
    """A JSON list of the exported stage's files."""

    format: Literal["manifest"]
    """Export format."""


class MergeConfig(SpecModel):
    """Config of a merge node."""

    weight: float
    """Weight of the other stage."""


class ManifestConfig(SpecModel):
    """Config of a manifest node."""

    stage: str
    """The exported stage."""


class MergeKind(Kind):
    def config(self, item, spec, refs):
        return MergeConfig(weight=item.weight)


class ManifestKind(Kind):
    def config(self, item, spec, refs):
        return ManifestConfig(stage=item.stage)


def _read(artifact):
    return sorted(p.name for p in artifact.path.iterdir() if p.name != "record.json")


class MergeBackend(Backend):
    name = "merger"
    version = "1"
    Config = MergeConfig

    def run(self, ctx):
        parts = {slot: (ctx.input(slot).path / "out.txt").read_text() for slot in ("from", "other")}
        (ctx.out_dir / "out.txt").write_text(json.dumps([parts, ctx.config.weight]))


class ManifestBackend(Backend):
    name = "manifest"
    version = "1"
    Config = ManifestConfig

    def run(self, ctx):
        files = _read(ctx.input("model"))
        (ctx.out_dir / "manifest.json").write_text(json.dumps(files))
        ctx.metrics["files"] = len(files)


KINDS = [MergeKind(Merge, "merger"), ManifestKind(Manifest, "manifest")]
merger = MergeBackend()
manifest = ManifestBackend()
'''


def install(root: Path) -> Path:
    """Install the package into ``root`` (a directory to put on ``sys.path``)."""
    module = f"{DIST}_mod"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(MODULE))
    info = root / f"{DIST}-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[llmbuild.kinds]\nplugin = {module}:KINDS\n\n"
        f"[llmbuild.backends]\nmerger = {module}:merger\nmanifest = {module}:manifest\n"
    )
    return root


def uninstall() -> None:
    sys.modules.pop(f"{DIST}_mod", None)
