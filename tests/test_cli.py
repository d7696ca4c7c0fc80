"""The command line: validate, resolve, schema, plan (text and JSON), and number arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmbuild.cli import main


def test_validate(project, capsys, tmp_path):
    assert main(["validate", str(project)]) == 0
    assert "ok (3 sources, 3 stages, 2 evals, 1 exports)" in capsys.readouterr().out
    # a command line written for the other commands works too, and makes no store
    assert main(["validate", str(project), "--store", str(tmp_path / "store")]) == 0
    assert not (tmp_path / "store").exists()


def test_resolve_shows_origins(project, capsys):
    assert main(["resolve", str(project), "--set", "stage.sft.lr=1e-5"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split(" = ")[0]: ln for ln in out.splitlines()}
    assert lines["architecture.layers"].endswith("presets/gpt2-tiny.toml:4")
    assert lines["stage[1].lr"].endswith("# --set stage.sft.lr=1e-5")
    assert lines["stage[0].eps"].endswith("# default")
    assert main(["resolve", str(project), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["spec"]["model"]["name"] == "fixture"
    assert data["origins"]["model.seed"].endswith("spec.toml:5")


def test_schema(tmp_path, capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "stage" in schema["properties"]
    out = tmp_path / "s.json"
    assert main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == schema


def test_plan_text_and_json(project, capsys):
    assert main(["plan", str(project)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("spec ")
    assert out[-1] == "14 nodes, 0 cached, 14 to build"
    assert main(["plan", str(project), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["nodes"]) == 14 and len(data["spec_hash"]) == 64


def test_console_script_is_installed(project):
    r = subprocess.run(["llmbuild", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("llmbuild ")
    r = subprocess.run(
        [sys.executable, "-m", "llmbuild", "plan", str(project)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "s.toml", "--top-p", "0"], "--top-p: must be a number > 0 and <= 1 (got 0)"),
        (["generate", "s.toml", "--top-p", "nan"], "--top-p: must be a number > 0"),
        (["generate", "s.toml", "--max-new-tokens", "0"], "must be an integer >= 1 (got 0)"),
        (["generate", "s.toml", "--temperature", "-1"], "--temperature: must be a number >= 0"),
        (
            ["generate", "s.toml", "--top-k", "many"],
            "--top-k: must be an integer >= 1 (got 'many')",
        ),
        (["chat", "s.toml", "--seed", str(2**64)], "--seed: must be an integer >= 0 and <= "),
        (["gc", "--keep", "-1"], "--keep: must be an integer >= 0 (got -1)"),
        (["serve", "s.toml", "--port", "70000"], "--port: must be an integer >= 0 and <= 65535"),
        (["scaling", "s.toml", "--budget", "0"], "--budget: must be a number > 0 (got 0)"),
        (["generate", "s.toml", "--temperature", "inf"], "--temperature: must be a number >= 0"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
