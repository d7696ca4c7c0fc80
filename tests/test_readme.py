"""The README's newcomer commands, which CI runs verbatim (.ci/run), stay runnable."""

from __future__ import annotations

import importlib.util
import shlex

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("readme_commands", REPO / ".ci/readme_commands.py")
readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme)


def test_install_build_and_test_sections_have_commands():
    install = readme.commands("Install")
    build = readme.commands("Build the main example")
    assert install == ['pip install torch==2.13.0 -e ".[dev]"']
    assert [shlex.split(c)[:2] for c in build] == [["llmbuild", "build"], ["llmbuild", "generate"]]
    assert readme.commands("Test") == ["python -m pytest"]
    for command in build:  # the spec they name is in the repository
        assert (REPO / shlex.split(command)[2]).is_file()


def test_a_missing_section_is_named():
    import pytest

    with pytest.raises(SystemExit, match="no section 'Deploy'"):
        readme.commands("Deploy", "# x\n## Install\n```bash\npip install x\n```\n")
    assert readme.commands("Install", "# x\n## Install\n```bash\npip install x  # y\n```\n") == [
        "pip install x"
    ]


def test_the_readme_shows_the_keys_and_spec_hashes_plan_prints():
    """The journeys' plan output (node keys, spec hashes) is what `llmbuild plan` prints
    for the main example today: a backend version bump changes both."""
    import re

    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    text = (REPO / "README.md").read_text()
    spec = REPO / "examples" / "shakespeare" / "spec.toml"
    for overrides in ((), ("stage.pretrain.lr=2e-3",)):
        planned = plan_spec(load_spec(spec, overrides))
        assert f"spec {planned.plan.spec_hash[:12]}  examples/shakespeare/spec.toml" in text
        for name, key in planned.keys.items():
            assert re.search(rf"{re.escape(name)} +{key.short}\b", text), (overrides, name)
