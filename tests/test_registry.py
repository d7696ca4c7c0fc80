"""The backend registry: built-ins and third-party backends through entry points."""

from __future__ import annotations

import sys
import textwrap

import pytest

from llmbuild.backend import Backend
from llmbuild.registry import Registry, RegistryError

BUILT_INS = {"data", "tokenizer", "tokenize", "megatron", "eval", "export"}


def test_built_ins_register_through_entry_points():
    registry = Registry()
    assert set(registry.names()) >= BUILT_INS
    for name in BUILT_INS:
        backend = registry.get(name)
        assert isinstance(backend, Backend) and backend.name == name
        assert backend.version and backend.Config is not None and backend.outputs


def _install_dist(root, dist: str, entries: dict[str, str], module_code: str = "") -> None:
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[llmbuild.backends]\n{lines}\n")
    if module_code:
        (root / f"{dist}_mod.py").write_text(textwrap.dedent(module_code))


PLUGIN = """
from pydantic import BaseModel
from llmbuild.backend import Backend

class Cfg(BaseModel):
    x: int = 1

class Plugin(Backend):
    name = "plugin"
    version = "3"
    Config = Cfg

backend = Plugin()
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.endswith("_mod")]:
        del sys.modules[mod]


def test_third_party_backend_loads_lazily(site):
    _install_dist(site, "plugin_dist", {"plugin": "plugin_dist_mod:backend"}, PLUGIN)
    registry = Registry()
    assert "plugin" in registry.names()
    assert "plugin_dist_mod" not in sys.modules  # listed, not imported
    assert registry.get("plugin").version == "3"


def test_duplicate_names_are_an_error(site):
    _install_dist(site, "one", {"data": "one_mod:backend"})
    with pytest.raises(RegistryError, match="registered twice"):
        Registry().get("data")


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(RegistryError, match="no backend named 'nope'.*megatron"):
        Registry().get("nope")


def test_entry_point_must_be_a_backend(site):
    _install_dist(site, "bad_dist", {"bad": "bad_dist_mod:backend"}, "backend = 42\n")
    with pytest.raises(RegistryError, match="not a llmbuild.backend.Backend"):
        Registry().get("bad")
