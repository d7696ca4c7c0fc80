"""A build's own local Ray cluster, from ``start_local_ray()`` to ``stop_local_ray()``: its
start, the first task, three tasks that keep a worker busy 0.2, 1 and 1.5 s (as a build's
nodes do), and its stop, in child processes, BENCH_RAY_START_ROUNDS each way (default 4,
2 with --quick), alternately: as a build starts it, and with Ray's task events on (Ray's
default, which a build turns off: ``executors.QUIET_CLUSTER_ENV``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from llmbuild.run.executors import start_local_ray, stop_local_ray
import ray

def busy(seconds):
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        pass
    return seconds

t0 = time.perf_counter()
start_local_ray()
t1 = time.perf_counter()
work = ray.remote(busy)
ray.get(work.remote(0))
t2 = time.perf_counter()
for seconds in (0.2, 1.0, 1.5):
    ray.get(work.remote(seconds))
t3 = time.perf_counter()
stop_local_ray()
t4 = time.perf_counter()
print(json.dumps({{"start": t1 - t0, "first task": t2 - t1, "stop": t4 - t3}}))
"""

TASK_EVENTS = "RAY_enable_core_worker_task_event_to_gcs"


def _child(events: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != TASK_EVENTS}
    if events is not None:
        env[TASK_EVENTS] = events
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(repo=str(REPO))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    rounds = int(os.environ.get("BENCH_RAY_START_ROUNDS", "2" if quick else "4"))
    ours, ray_default = [], []
    for _ in range(rounds):
        ours.append(_child(None))
        ray_default.append(_child("1"))
    rows = []
    for phase in ("start", "first task", "stop"):
        a = statistics.median(r[phase] for r in ours)
        b = statistics.median(r[phase] for r in ray_default)
        rows.append(
            {
                "benchmark": f"a build's local Ray cluster: {phase} (median of {rounds} "
                "children, alternating)",
                "result": f"{a:.2f} s",
                "baseline": f"Ray's task events on: {b:.2f} s",
                "ratio": a / b,
                "unit": "the time with task events",
                "target": "",
            }
        )
    return rows


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
