"""Guards: the core never imports heavy libraries; every preset and example plans."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmbuild.plan import StatCache, plan_spec
from llmbuild.spec.load import load_spec
from tests.conftest import REPO

HEAVY = [
    "torch",
    "ray",
    "megatron",
    "transformers",
    "tokenizers",
    "lm_eval",
    "numpy",
    "pyarrow",
    "onnxruntime",
]


def _imported_after(code: str) -> list[str]:
    probe = (
        f"import sys\n{code}\nimport json\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_import_loads_no_heavy_library():
    assert _imported_after("import llmbuild.cli") == []


def test_plan_of_the_main_example_loads_no_heavy_library():
    code = (
        "from llmbuild.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['plan', 'examples/shakespeare/spec.toml']) == 0\n"
        "    assert main(['validate', 'examples/shakespeare/spec.toml']) == 0\n"
    )
    assert _imported_after(code) == []


PRESET_HOST = """\
extends = ["@{preset}"]
[model]
name = "host"
[[data.sources]]
name = "text"
path = "data/books"
[tokenizer]
kind = "byte"
[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 1
global_batch = 64
lr = 1e-4
"""


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (REPO / "llmbuild" / "presets").glob("*.toml"))
)
def test_every_preset_validates_and_plans(tmp_path, preset):
    from tests.conftest import write_project

    text = PRESET_HOST.format(preset=preset)
    preset_text = (REPO / "llmbuild" / "presets" / f"{preset}.toml").read_text()
    if "[tokenizer]" in preset_text:  # the preset brings its own tokenizer
        text = text.replace('[tokenizer]\nkind = "byte"\n', "")
    spec = write_project(tmp_path, text)
    planned = plan_spec(load_spec(spec), cache=StatCache())
    assert "stage:pretrain" in planned.keys


def test_presets_required_by_the_design_exist():
    names = {p.stem for p in (REPO / "llmbuild" / "presets").glob("*.toml")}
    assert {"gpt2-tiny", "llama-tiny", "gpt2-124m", "llama3-8b"} <= names


def test_fully_cached_build_starts_no_ray_and_imports_no_torch(project, fixture_env, tmp_path):
    from tests.run.helpers import fixture_build

    store = tmp_path / "store"
    assert fixture_build(project, store).ok
    code = (
        "from llmbuild.cli import main\n"
        "import contextlib, io\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        f"    rc = main(['build', {str(project)!r}, '--store', {str(store)!r}, '--plain'])\n"
        "assert rc == 0 and buf.getvalue().strip().endswith('14 nodes, 14 cached'), buf.getvalue()\n"
    )
    assert _imported_after(code) == []
