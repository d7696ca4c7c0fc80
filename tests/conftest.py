"""Shared fixtures: a small complete spec with its own data, written into a temp dir."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

FULL_SPEC = """\
extends = ["@gpt2-tiny"]

[model]
name = "fixture"
seed = 7

[[data.sources]]
name = "books"
path = "data/books/*.txt"
format = "text"

[[data.sources]]
name = "chat"
path = "data/chat.jsonl"
role = "chat"

[[data.sources]]
name = "prefs"
path = "data/prefs.jsonl"
role = "preferences"

[data.split]
validation = 0.1

[tokenizer]
kind = "char"

[parallelism]
micro_batch = 2

[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 20
global_batch = 4
lr = 1e-3

[[stage]]
name = "sft"
kind = "sft"
from = "pretrain"
data = "chat"
steps = 10
global_batch = 4
lr = 2e-5

[[stage]]
name = "dpo"
kind = "dpo"
from = "sft"
data = "prefs"
steps = 5
global_batch = 4

[[eval]]
name = "ppl"
kind = "perplexity"
stages = ["pretrain", "sft"]

[[eval]]
name = "gen"
kind = "samples"
stages = ["sft"]
prompts = ["Hello"]

[[export]]
format = "hf"
stage = "dpo"
"""


def write_project(root: Path, spec: str = FULL_SPEC) -> Path:
    """A spec file with its data under ``root``; returns the spec path."""
    (root / "data" / "books").mkdir(parents=True, exist_ok=True)
    (root / "data" / "books" / "a.txt").write_text("To be, or not to be.\n")
    (root / "data" / "books" / "b.txt").write_text("All the world's a stage.\n")
    (root / "data" / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "hello"}]}\n'
    )
    (root / "data" / "prefs.jsonl").write_text(
        '{"prompt": "2+2=", "chosen": "4", "rejected": "5"}\n'
    )
    path = root / "spec.toml"
    path.write_text(textwrap.dedent(spec))
    return path


def function_reward_project(root: Path, module: str, code: str, function: str = "score") -> Path:
    """``write_project`` with a GRPO stage ``rl`` rewarded by ``module:function``, the
    module's ``code`` written beside the spec (give each test its own module name: a
    module imported once stays imported)."""
    grpo = f"""\
[[data.sources]]
name = "prompts"
path = "data/prefs.jsonl"
role = "prompts"

[[stage]]
name = "rl"
kind = "grpo"
from = "dpo"
data = "prompts"
steps = 2
global_batch = 4
rewards = [{{ kind = "function", function = "{module}:{function}" }}]

"""
    spec = write_project(root, FULL_SPEC.replace("[[eval]]\n", grpo + "[[eval]]\n", 1))
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    return spec


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never touch the user's stat cache or store."""
    os.environ["LLMBUILD_CACHE_DIR"] = str(tmp_path_factory.mktemp("llmbuild-cache"))
    os.environ.pop("LLMBUILD_STORE", None)


def suite_store(factory: pytest.TempPathFactory) -> Path:
    """The one store the suite's shared builds go to: ``LLMBUILD_TEST_STORE`` when set, kept
    between runs so that a second run finds them built; else a new one for each run."""
    kept = os.environ.get("LLMBUILD_TEST_STORE")
    store = Path(kept).resolve() if kept else factory.getbasetemp() / "suite-store"
    store.mkdir(parents=True, exist_ok=True)
    return store


def private_copy(store: Path, dest: Path) -> Path:
    """A store of one's own to edit, holding what ``store`` holds. Committed artifacts are
    never written in place, so their files are hard-linked; everything else is copied."""
    shutil.copytree(store, dest, ignore=shutil.ignore_patterns("artifacts"))
    shutil.copytree(store / "artifacts", dest / "artifacts", copy_function=os.link)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path)


@pytest.fixture
def fixture_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory for the fixture backend's control file and invocation log."""
    d = tmp_path / "fixture"
    d.mkdir()
    monkeypatch.setenv("LLMBUILD_FIXTURE_DIR", str(d))
    return d


def artifact_dirs(store: Path, name: str, folder: str = "artifacts") -> list[Path]:
    """The artifact directories (or quarantined ones, ``folder="corrupt"``) of a local
    store whose record names the node ``name``."""
    import json

    out = []
    for d in sorted((Path(store) / folder).glob("*")):
        try:
            if json.loads((d / "record.json").read_text())["name"] == name:
                out.append(d)
        except (OSError, ValueError, KeyError):
            continue
    return out
