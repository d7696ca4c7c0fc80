"""Run every benchmark (bench/bench_*.py) and print one table of ratios against the
baselines each measures in the same run: python bench/run.py"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(names: list[str]) -> int:
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if names:
        modules = [m for m in modules if any(n in m for n in names)]
    print(f"{'benchmark':<44} {'time':>10}  {'vs baseline':>11}")
    for name in modules:
        module = importlib.import_module(f"bench.{name}")
        print(f"-- {name}: {module.__doc__.strip().splitlines()[0]}")
        for row in module.run():
            print(f"{row['benchmark']:<44} {row['seconds'] * 1000:8.1f} ms  {row['ratio']:10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
