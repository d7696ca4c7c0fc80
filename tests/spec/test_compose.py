"""extends (presets and relative fragments), deep merge, --set overrides and provenance."""

from __future__ import annotations

import pytest

from llmbuild.errors import SpecError
from llmbuild.spec.compose import Origin
from llmbuild.spec.load import load_spec
from tests.conftest import FULL_SPEC, write_project


def test_preset_values_and_their_origins(project):
    r = load_spec(project)
    assert r.spec.architecture.layers == 4 and r.spec.architecture.hidden == 128
    assert r.origin(("architecture", "layers")).source.endswith("presets/gpt2-tiny.toml")
    assert r.origin(("architecture", "layers")).line == 4
    assert r.origin(("model", "seed")) == Origin(r.display, 5)
    assert r.origin(("stage", 0, "eps")) == Origin("default")


def test_relative_fragment_tables_merge_arrays_replace(tmp_path):
    (tmp_path / "base.toml").write_text(
        'extends = ["@llama-tiny"]\n[architecture]\nlayers = 2\n[model]\nname = "base"\n'
        '[[stage]]\nname = "old"\nkind = "pretrain"\nsteps = 1\nglobal_batch = 2\nlr = 1.0\n'
    )
    spec = write_project(
        tmp_path, FULL_SPEC.replace('extends = ["@gpt2-tiny"]', 'extends = ["base.toml"]')
    )
    r = load_spec(spec)
    arch = r.spec.architecture
    assert arch.style == "llama" and arch.layers == 2 and arch.kv_heads == 2  # merged
    assert r.origin(("architecture", "layers")) == Origin("base.toml", 3) or r.origin(
        ("architecture", "layers")
    ).source.endswith("base.toml")
    assert [s.name for s in r.spec.stage] == ["pretrain", "sft", "dpo"]  # replaced
    assert r.spec.model.name == "fixture"


def test_set_overrides_by_name_and_index(project):
    r = load_spec(
        project,
        [
            "stage.sft.lr=1e-5",
            "stage[0].steps=3",
            "model.name=other",
            "architecture.layers=2",
            'stage.pretrain.schedule={kind="wsd"}',
            "export.hf@dpo.dtype=bfloat16",  # an unnamed export: <format>@<stage>
        ],
    )
    assert r.spec.export[0].dtype == "bfloat16"
    assert r.spec.stage_named("sft").lr == 1e-5
    assert r.spec.stage[0].steps == 3
    assert r.spec.model.name == "other"  # not TOML: taken as a string
    assert r.spec.stage[0].schedule.kind == "wsd"
    assert str(r.origin(("stage", 1, "lr"))) == "--set stage.sft.lr=1e-5"
    assert str(r.origin(("architecture", "layers"))) == "--set architecture.layers=2"


def test_set_errors_are_clear(project):
    with pytest.raises(SpecError, match="no stage named 'sfft'; did you mean 'sft'"):
        load_spec(project, ["stage.sfft.lr=1"])
    with pytest.raises(SpecError, match="no export named 'hf@dpp'; did you mean 'hf@dpo'"):
        load_spec(project, ["export.hf@dpp.dtype=bfloat16"])
    with pytest.raises(SpecError, match="no export named 'hf'; did you mean 'hf@dpo'"):
        load_spec(project, ["export.hf.dtype=bfloat16"])  # an export's name holds its stage
    with pytest.raises(SpecError, match=r"no eval named 'nothing' \(named: "):
        load_spec(project, ["eval.nothing.batch_size=2"])
    with pytest.raises(SpecError, match="expected dotted.key=value"):
        load_spec(project, ["stage.sft.lr"])
    full = project.read_text()
    project.write_text(full.split("[[eval]]")[0])  # no evals, no exports
    with pytest.raises(SpecError, match=r"no eval named 'ppl' \(the spec has none: write a "):
        load_spec(project, ["eval.ppl.kind=perplexity"])  # it said [[eval]] was a table
    project.write_text(full)
    with pytest.raises(SpecError, match="extends cannot be set: the files a spec extends"):
        load_spec(project, ['extends=["@llama-tiny"]'])  # it was shown, and not applied
    with pytest.raises(SpecError) as info:
        load_spec(project, ["stage.sft.lr=-1"])
    assert "--set stage.sft.lr=-1: stage[1].lr: must be > 0" in str(info.value)
    # A table or array that is no TOML (JSON's, say) is said, not taken as a string.
    with pytest.raises(SpecError) as info:
        load_spec(project, ['stage.sft.schedule={"kind": "wsd"}'])
    said = str(info.value)
    assert "the value is no TOML (Expected '=' after a key" in said, said
    assert "a table is written { key = value, ... }" in said and "column" not in said, said


def test_unknown_preset_suggests(tmp_path):
    spec = write_project(tmp_path, FULL_SPEC.replace("@gpt2-tiny", "@gpt2-tinny"))
    with pytest.raises(SpecError, match="no preset '@gpt2-tinny'; did you mean '@gpt2-tiny'"):
        load_spec(spec)


def test_extends_cycle(tmp_path):
    (tmp_path / "a.toml").write_text('extends = ["b.toml"]\n')
    (tmp_path / "b.toml").write_text('extends = ["a.toml"]\n')
    with pytest.raises(SpecError, match="extends cycle"):
        load_spec(tmp_path / "a.toml")


def test_paths_are_relative_to_the_file_that_wrote_them(tmp_path):
    spec = write_project(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.toml").write_text(
        spec.read_text().replace('path = "data/books/*.txt"', 'path = "../data/books"')
    )
    (tmp_path / "sub" / "data").mkdir()
    for name in ("chat.jsonl", "prefs.jsonl"):  # where base.toml's relative paths lead
        (tmp_path / "sub" / "data" / name).write_text((tmp_path / "data" / name).read_text())
    child = tmp_path / "child.toml"
    child.write_text('extends = ["sub/base.toml"]\n[model]\nname = "child"\n')
    r = load_spec(child)
    assert r.spec.data.sources[0].path == (str(tmp_path / "data" / "books"),)
    assert r.spec.data.sources[1].path == (str(tmp_path / "sub" / "data" / "chat.jsonl"),)


def test_style_defaults_fill_the_architecture(tmp_path):
    spec = write_project(tmp_path, FULL_SPEC.replace("@gpt2-tiny", "@llama-tiny"))
    arch = load_spec(spec).spec.architecture
    assert (arch.norm, arch.activation, arch.position, arch.tie_embeddings) == (
        "rmsnorm",
        "swiglu",
        "rope",
        False,
    )
    gpt = load_spec(write_project(tmp_path / "g")).spec.architecture
    assert (gpt.norm, gpt.activation, gpt.ffn_hidden, gpt.kv_heads) == ("layernorm", "gelu", 512, 4)
