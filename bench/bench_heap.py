"""The training rank's heap: the training loop's step (``bench_train``'s, at the e2e
benchmark's vocabulary) in child processes, with the heap as the training stage keeps it
(``backends/megatron/heap.py``) and with glibc's defaults, alternately (BENCH_HEAP_ROUNDS x
2 children, default 2, 1 with --quick; BENCH_HEAP_STEPS steps each, default 300, 100 with
--quick), on a thread as a Ray Train rank's loop runs. Reported: page faults and the
kernel's CPU time per step (``getrusage``), which the machine's drift barely moves, and the
steps' speed, which it does."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import contextlib, json, resource, sys, threading, time
sys.path.insert(0, {repo!r})
from bench import bench_train as bt
from llmbuild.backends.megatron.heap import keep_freed_memory

KEEP, STEPS = {keep}, {steps}
out = {{}}

def loop():
    step = bt._our_step(bt.make_batch())
    for _ in range(bt.WARMUP):
        step()
    before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(STEPS):
        step()
    took, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF)
    out.update(
        steps_per_s=STEPS / took,
        faults=(after.ru_minflt - before.ru_minflt) / STEPS,
        sys_ms=(after.ru_stime - before.ru_stime) * 1000 / STEPS,
    )

def body():
    with keep_freed_memory() if KEEP else contextlib.nullcontext():
        loop()

thread = threading.Thread(target=body)
thread.start()
thread.join()
print(json.dumps(out))
"""


def _child(keep: bool, steps: int) -> dict:
    code = CHILD.format(repo=str(REPO), keep=keep, steps=steps)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900
    )
    return json.loads(done.stdout.splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    rounds = int(os.environ.get("BENCH_HEAP_ROUNDS", "1" if quick else "2"))
    steps = int(os.environ.get("BENCH_HEAP_STEPS", "100" if quick else "300"))
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(rounds):
        for keep in (False, True):
            runs[keep].append(_child(keep, steps))

    def median(keep: bool, field: str) -> float:
        return statistics.median(r[field] for r in runs[keep])

    kept, default = (
        {f: median(k, f) for f in ("faults", "sys_ms", "steps_per_s")} for k in (True, False)
    )
    shape = f"4 x 128, vocabulary 65 padded to 128, {steps} steps, median of {rounds} children"
    return [
        {
            "benchmark": f"the training step's kernel time, on a rank's thread ({shape}): "
            "the heap kept for the stage",
            "result": f"{kept['sys_ms']:.2f} ms/step of system CPU, "
            f"{kept['faults']:.0f} page faults/step",
            "baseline": f"glibc's default thresholds, alternate children: "
            f"{default['sys_ms']:.2f} ms/step, {default['faults']:.0f} page faults/step",
            "ratio": kept["sys_ms"] / default["sys_ms"],
            "unit": "the default heap's system CPU time",
            "target": "",
        },
        {
            "benchmark": "the same children's steps: speed",
            "result": f"{kept['steps_per_s']:.1f} steps/s",
            "baseline": f"glibc's default thresholds: {default['steps_per_s']:.1f} steps/s",
            "ratio": kept["steps_per_s"] / default["steps_per_s"],
            "unit": "the default heap's speed",
            "target": "",
        },
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from bench.run import print_table

    print_table(run(quick="--quick" in sys.argv))
