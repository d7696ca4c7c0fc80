"""What a local Ray cluster's own processes cost the training step beside them: the
step (``bench_train``'s, ours and the plain one, at the e2e benchmark's vocabulary) in
this process while a child holds an idle cluster started as a build starts it
(``start_local_ray``), in rounds of BENCH_RAY_IDLE_SECONDS each (default 6, 4 with
--quick) alternating the cluster's processes running and stopped (SIGSTOP), so that the
machine's drift falls on both alike (BENCH_RAY_IDLE_ROUNDS pairs, default 8, 4 with
--quick). The ratio is the running rounds' speed over the stopped ones', the median of
the pairs. The e2e benchmark's plain script runs with no cluster beside it."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HOLDER = """
import sys
sys.path.insert(0, {repo!r})
from llmbuild.run.executors import start_local_ray, stop_local_ray

start_local_ray()
print("up", flush=True)
sys.stdin.read()  # until the benchmark closes it
stop_local_ray()
"""


def _cluster(sig: int, pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _pair_ratios(step, pids: list[int], rounds: int, seconds: float) -> list[float]:
    def speed() -> float:
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            step()
            done += 1
        return done / (time.perf_counter() - began)

    ratios = []
    for _ in range(rounds):
        _cluster(signal.SIGCONT, pids)
        time.sleep(0.5)
        running = speed()
        _cluster(signal.SIGSTOP, pids)
        time.sleep(0.5)
        ratios.append(running / speed())
    _cluster(signal.SIGCONT, pids)
    return ratios


def run(quick: bool = False) -> list[dict]:
    import psutil

    from bench import bench_train as bt

    rounds = int(os.environ.get("BENCH_RAY_IDLE_ROUNDS", "4" if quick else "8"))
    seconds = float(os.environ.get("BENCH_RAY_IDLE_SECONDS", "4" if quick else "6"))
    batch = bt.make_batch()
    steps = {"ours": bt._our_step(batch), "plain": bt._plain_step(batch)}
    for step in steps.values():
        for _ in range(bt.WARMUP):
            step()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(repo=str(REPO))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if holder.stdout.readline().strip() != "up":
            raise RuntimeError("the local Ray cluster did not start")
        time.sleep(5)  # its start-up work done: the cluster as a long stage sees it
        pids = [p.pid for p in psutil.Process(holder.pid).children(recursive=True)]
        pids.append(holder.pid)
        ratios = {name: _pair_ratios(step, pids, rounds, seconds) for name, step in steps.items()}
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)
    shape = f"{bt.LAYERS} x {bt.HIDDEN}, seq {bt.SEQ}, batch {bt.BATCH}, vocabulary {bt.VOCAB}"
    return [
        {
            "benchmark": f"the training step ({name}, {shape}) beside an idle local Ray cluster "
            f"as a build starts it (median of {rounds} pairs of {seconds:g}-second rounds)",
            "result": f"running: {statistics.mean(r):.3f}x mean of pairs",
            "baseline": "the same cluster's processes stopped, alternate rounds",
            "ratio": statistics.median(r),
            "unit": "the step's speed with the cluster stopped",
            "target": "",
        }
        for name, r in ratios.items()
    ]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
