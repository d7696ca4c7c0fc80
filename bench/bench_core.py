"""Planner and cache speed: `llmbuild plan` and a fully cached `llmbuild build` of a
20-node spec (medians of 7 runs, 3 with --quick), against the bare Python interpreter
start measured in the same run."""

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


def _time(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(quick: bool = False) -> list[dict]:
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
        repeat = 3 if quick else 7
        base = _time([sys.executable, "-c", "pass"], env, repeat)
        cli = _time([sys.executable, "-c", "import llmbuild.cli"], env, repeat)
        plan = _time([*llmbuild, "plan", str(spec)], env, repeat)
        cached = _time([*llmbuild, "build", str(spec), "--plain"], env, repeat)
        check = subprocess.run(
            [*llmbuild, "build", str(spec), "--plain"],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert check.stdout.strip().endswith("20 nodes, 20 cached"), check.stdout
    startup = f"python startup (`python -c pass`): {base * 1000:.0f} ms"
    return [
        {
            "benchmark": "`import llmbuild.cli` (what every command loads)",
            "result": f"{cli * 1000:.0f} ms",
            "baseline": startup,
            "ratio": cli / base,
            "unit": "the startup time",
        },
        {
            "benchmark": "`llmbuild plan`, 20-node spec",
            "result": f"{plan * 1000:.0f} ms",
            "baseline": startup,
            "ratio": plan / base,
            "unit": "the startup time",
        },
        {
            "benchmark": "`llmbuild build`, 20 nodes all cached (no Ray, no torch)",
            "result": f"{cached * 1000:.0f} ms",
            "baseline": startup,
            "ratio": cached / base,
            "unit": "the startup time",
        },
    ]


if __name__ == "__main__":
    from bench.run import print_table

    print_table(run(quick="--quick" in sys.argv))
