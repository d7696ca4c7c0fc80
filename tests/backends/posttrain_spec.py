"""A tiny post-training project on the arithmetic example's generated data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import REPO


def _generator():
    path = REPO / "examples" / "arithmetic" / "generate.py"
    spec = importlib.util.spec_from_file_location("arithmetic_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def posttrain_spec(root: Path, stages: str, extra: str = "", preset: str = "gpt2-tiny") -> Path:
    """Sources of every role, a char tokenizer, a 2-layer model (``preset``'s architecture)
    pretrained for 20 steps, then ``stages`` (TOML ``[[stage]]`` tables)."""
    gen = _generator()
    gen.SIZES.update(equations=800, chat=300, preferences=200, prompts=100, heldout=20)
    gen.generate(root / "data", seed=1)
    spec = root / "spec.toml"
    spec.write_text(f"""\
extends = ["@{preset}"]
[model]
name = "post"
seed = 5
[architecture]
layers = 2
hidden = 64
heads = 4
ffn_hidden = 128
seq_len = 32
[[data.sources]]
name = "equations"
path = "data/equations.txt"
separator = "\\n"
[[data.sources]]
name = "chat"
path = "data/chat.jsonl"
role = "chat"
[[data.sources]]
name = "prefs"
path = "data/preferences.jsonl"
role = "preferences"
[[data.sources]]
name = "prompts"
path = "data/prompts.jsonl"
role = "prompts"
[data.clean]
dedup = "none"
[data.split]
validation = 0.1
[tokenizer]
kind = "char"
sources = ["equations", "chat"]
[parallelism]
micro_batch = 4
[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 20
global_batch = 8
lr = 3e-3
eval_batches = 2
{stages}
{extra}""")
    return spec
