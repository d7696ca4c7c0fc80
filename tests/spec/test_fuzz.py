"""Hypothesis: whatever TOML a user writes, the loader answers with problems, never a
traceback. Random documents, and a valid spec with random values planted anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbuild.errors import UserError
from llmbuild.plan import plan_spec
from llmbuild.spec.load import load_spec
from llmbuild.spec.root import sections
from tests.conftest import FULL_SPEC, write_project

KEYS = sorted(
    {
        *sections(),
        "name",
        "kind",
        "steps",
        "lr",
        "from",
        "data",
        "sources",
        "path",
        "heads",
        "hidden",
        "layers",
        "tensor",
        "stage",
        "stages",
        "format",
        "role",
        "global_batch",
        "schedule",
        "warmup",
        "betas",
        "vocab_size",
        "extends",
        "x",
    }
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["pretrain", "sft", "@gpt2-tiny", "char", "bpe", "cosine", "chat", "hf"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4),
    ),
    max_leaves=12,
)


def _tomlable(value: Any) -> Any:
    """tomli_w writes no None: drop it (TOML has no null)."""
    if isinstance(value, dict):
        return {k: _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_tomlable(v) for v in value if v is not None]
    return value


def _check(path: Path) -> None:
    try:
        plan_spec(load_spec(path))
    except UserError:
        pass


fuzz_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@fuzz_settings
@given(doc=st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_random_documents(tmp_path_factory, doc):
    root = tmp_path_factory.mktemp("doc")
    path = root / "spec.toml"
    path.write_text(tomli_w.dumps(_tomlable(doc)))
    _check(path)


@fuzz_settings
@given(
    raw=st.one_of(
        st.text(max_size=80).map(lambda t: t.encode("utf-8", "replace")), st.binary(max_size=40)
    )
)
def test_random_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("text") / "spec.toml"
    path.write_bytes(raw)
    _check(path)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


BASE = tomllib.loads(FULL_SPEC)
BASE_PATHS = _paths(BASE)


def _planted(where: list, new: list, add_key: str) -> dict:
    """The full spec with ``new`` values planted at ``where`` (or under ``add_key``)."""
    doc = tomllib.loads(FULL_SPEC)
    for path, value in zip(where, new):
        node = doc
        for part in path[:-1]:  # an earlier plant may have replaced part of the path
            if (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and part < len(node)
            ):
                node = node[part]
            else:
                node = None
                break
        if (isinstance(node, dict) and isinstance(path[-1], str)) or (
            isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)
        ):
            node[path[-1]] = value
        elif isinstance(node, dict):
            node[add_key] = value
    return doc


@fuzz_settings
@given(
    where=st.lists(st.sampled_from(BASE_PATHS), min_size=1, max_size=3),
    new=st.lists(values, min_size=3, max_size=3),
    add_key=st.sampled_from(KEYS),
)
def test_valid_spec_with_planted_values(tmp_path_factory, where, new, add_key):
    doc = _planted(where, new, add_key)
    root = tmp_path_factory.mktemp("planted")
    spec = write_project(root)
    spec.write_text(tomli_w.dumps(_tomlable(doc)))
    _check(spec)


def _in_process(path: Path) -> bool:
    """Whether the spec is good: it loads and plans."""
    try:
        plan_spec(load_spec(path))
    except UserError:
        return False
    return True


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    where=st.lists(st.sampled_from(BASE_PATHS), min_size=1, max_size=2),
    new=st.lists(values, min_size=2, max_size=2),
)
def test_the_command_line_on_planted_specs(tmp_path_factory, where, new):
    """The real command, in its own process, under a timeout: a bad spec exits 2 with
    its problems and no traceback, a good one exits 0; nothing hangs."""
    import subprocess
    import sys

    doc = _planted(where, new, "x")
    root = tmp_path_factory.mktemp("cli")
    spec = write_project(root)
    spec.write_text(tomli_w.dumps(_tomlable(doc)))
    done = subprocess.run(
        [sys.executable, "-m", "llmbuild", "plan", str(spec), "--store", str(root / "store")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == (0 if _in_process(spec) else 2), (done.returncode, done.stderr)
