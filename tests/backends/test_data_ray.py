"""The data chain under the Ray executor (per-file and per-shard Ray tasks) produces the
same bytes as inline."""

from __future__ import annotations

import io

import pytest

from llmbuild.run.build import BuildOptions, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.store.store import Store
from tests.backends.conftest import run_nodes
from tests.backends.datafiles import spec_text, write_sources, write_spec

ray = pytest.importorskip("ray")


def test_ray_matches_inline(tmp_path):
    paths = write_sources(tmp_path)
    spec = write_spec(
        tmp_path,
        spec_text(
            {"plays": str(paths["plays"]), "chat": str(paths["chat"])}, tokenizer='kind = "char"'
        ),
    )
    until = ("tokenize:plays", "tokenize:chat")
    inline = run_nodes(spec, tmp_path / "inline", until)
    try:
        on_ray = build(
            load_spec(spec),
            Store(str(tmp_path / "ray")),
            BuildOptions(executor="ray", live=False, until=until),
            PlainReporter(io.StringIO()),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert on_ray.ok
    for name, result in inline.results.items():
        assert on_ray.results[name].record.output_digest == result.record.output_digest
