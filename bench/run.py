"""Run every benchmark (bench/bench_*.py) and print one table of ratios, each against a
baseline measured in the same run, so that the ratios hold on a busy machine:

    python bench/run.py            # everything (10-25 minutes on 2 cores)
    python bench/run.py --quick    # smaller inputs, fewer repeats, no 1 GB memory run
    python bench/run.py hash train # only the modules whose names contain these

Each module's ``run(quick)`` returns rows: benchmark, result, baseline (with its value),
ratio, unit (what the ratio is of) and optionally target.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def print_table(rows: list[dict], out=sys.stdout) -> None:
    """The rows as one markdown table."""
    print("| benchmark | result | baseline (same run) | ratio | target |", file=out)
    print("| --- | --- | --- | --- | --- |", file=out)
    for r in rows:
        ratio = f"{r['ratio']:.2f}x {r['unit']}"
        cells = [r["benchmark"], r["result"], r["baseline"], ratio, r.get("target", "")]
        print("| " + " | ".join(_cell(c) for c in cells) + " |", file=out, flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()}, Python {platform.python_version()}"
    )


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only modules whose names contain these")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    args = parser.parse_args(argv)
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if args.names:
        modules = [m for m in modules if any(n in m for n in args.names)]
    print(f"machine: {machine()}; load average {_load()}", file=sys.stderr)
    rows: list[dict] = []
    start = time.perf_counter()
    for name in modules:
        t = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        print(f"-- {name}: {module.__doc__.strip().splitlines()[0]}", file=sys.stderr)
        rows += module.run(quick=args.quick)
        print(f"   {time.perf_counter() - t:.0f} s; load average {_load()}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    print(f"all benchmarks: {elapsed:.0f} s{' (--quick)' if args.quick else ''}", file=sys.stderr)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
