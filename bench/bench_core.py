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

from tests.conftest import FULL_SPEC, write_project  # noqa: E402

# The test suite's 14-node spec (3 sources, tokenizer, 3 tokenize, 3 stages, 4 evals and
# exports) plus 6 more eval and export nodes.
SPEC_20 = (
    FULL_SPEC
    + """
[[eval]]
name = "late"
kind = "perplexity"
stages = ["dpo"]
[[eval]]
name = "more"
kind = "samples"
stages = ["pretrain", "dpo"]
prompts = ["Hi"]
[[export]]
format = "gguf"
stage = "dpo"
[[export]]
format = "onnx"
stage = "sft"
[[export]]
format = "hf"
stage = "sft"
"""
)


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
        spec = write_project(root / "project", SPEC_20)
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
