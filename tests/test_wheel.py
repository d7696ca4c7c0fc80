"""A wheel built from the repository works on its own: installed into a fresh virtual
environment (not this checkout), it validates and plans every example, presets and
built-in kinds included."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.examples.conftest import copy_example

EXAMPLES = sorted(p.parent.name for p in (REPO / "examples").glob("*/spec.toml"))


def _run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a fresh venv with the wheel installed. Its dependencies come from
    this environment's site-packages, added as a plain path (so none of its .pth files
    run: the editable install of this checkout stays out)."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    skip = (".*", "build", "*.egg-info", "__pycache__", "tests")
    shutil.copytree(REPO, root / "src", ignore=shutil.ignore_patterns(*skip))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", root / "dist", root / "src", cwd=root)  # fmt: skip
    (wheel,) = (root / "dist").glob("llmbuild-*.whl")
    _run(sys.executable, "-m", "venv", root / "venv")
    python = root / "venv" / "bin" / "python"
    site = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
    )
    ours = [p for p in sys.path if p.endswith("site-packages")] or [
        sysconfig.get_paths()["purelib"]
    ]
    (site / "dependencies.pth").write_text("".join(p + "\n" for p in ours))
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=root)
    return python


def test_the_wheel_is_what_runs(installed, tmp_path):
    where = _run(installed, "-c", "import llmbuild, llmbuild.backends; print(llmbuild.__file__)",
                 cwd=tmp_path).stdout  # fmt: skip
    assert str(installed.parents[1]) in where, where


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_validates_and_plans_from_the_wheel(installed, tmp_path, example):
    spec = copy_example(example, tmp_path) / "spec.toml"
    _run(installed, "-m", "llmbuild", "validate", spec, cwd=tmp_path)
    plan = _run(installed, "-m", "llmbuild", "plan", spec, cwd=tmp_path)
    assert "to build" in plan.stdout and "stage:" in plan.stdout
