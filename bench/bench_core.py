"""Planner and cache speed: `llmbuild plan` and a fully cached `llmbuild build` of a
20-node spec, against the bare Python interpreter start measured in the same run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC_20 = """\
extends = ["@gpt2-tiny"]
[model]
name = "bench"
[[data.sources]]
name = "a"
path = "data/a.txt"
[[data.sources]]
name = "b"
path = "data/b.txt"
[[data.sources]]
name = "chat"
path = "data/chat.jsonl"
role = "chat"
[[data.sources]]
name = "prefs"
path = "data/prefs.jsonl"
role = "preferences"
[tokenizer]
kind = "char"
[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 10
global_batch = 4
lr = 1e-3
[[stage]]
name = "sft"
kind = "sft"
from = "pretrain"
data = "chat"
steps = 10
global_batch = 4
[[stage]]
name = "dpo"
kind = "dpo"
from = "sft"
data = "prefs"
steps = 10
global_batch = 4
[[eval]]
name = "ppl"
kind = "perplexity"
stages = ["pretrain", "sft", "dpo"]
[[eval]]
name = "gen"
kind = "samples"
stages = ["sft", "dpo"]
prompts = ["Hi"]
[[export]]
format = "hf"
stage = "dpo"
[[export]]
format = "gguf"
stage = "dpo"
[[export]]
format = "onnx"
stage = "sft"
"""


def _project(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("To be, or not to be. " * 2000)
    (root / "data" / "b.txt").write_text("All the world's a stage. " * 2000)
    (root / "data" / "chat.jsonl").write_text('{"messages": []}\n')
    (root / "data" / "prefs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    (root / "spec.toml").write_text(SPEC_20)
    return root / "spec.toml"


def _time(cmd: list[str], env: dict[str, str], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run() -> list[dict]:
    import io

    from llmbuild.run.build import BuildOptions, PlainReporter, build
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store
    from tests.fixture_backend import fixture_registry

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["LLMBUILD_FIXTURE_DIR"] = str(root)
        spec = _project(root / "project")
        store = root / "store"
        env = {**os.environ, "LLMBUILD_STORE": str(store), "LLMBUILD_CACHE_DIR": str(root / "c")}
        os.environ["LLMBUILD_CACHE_DIR"] = env["LLMBUILD_CACHE_DIR"]
        outcome = build(
            load_spec(spec),
            Store(str(store)),
            BuildOptions(executor="inline", live=False),
            PlainReporter(io.StringIO()),
            registry=fixture_registry(),
        )
        assert outcome.ok and len(outcome.results) == 20, outcome.summary
        llmbuild = [sys.executable, "-m", "llmbuild"]
        base = _time([sys.executable, "-c", "pass"], env)
        plan = _time([*llmbuild, "plan", str(spec)], env)
        cached = _time([*llmbuild, "build", str(spec), "--plain"], env)
        check = subprocess.run(
            [*llmbuild, "build", str(spec), "--plain"],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert check.stdout.strip().endswith("20 nodes, 20 cached"), check.stdout
    return [
        {"benchmark": "python -c pass (baseline)", "seconds": base, "ratio": 1.0},
        {"benchmark": "llmbuild plan, 20-node spec", "seconds": plan, "ratio": plan / base},
        {
            "benchmark": "llmbuild build, 20 nodes all cached",
            "seconds": cached,
            "ratio": cached / base,
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row['benchmark']:<40} {row['seconds'] * 1000:8.1f} ms  {row['ratio']:6.1f}x")
