"""Every gloo group of a process shares one gloo device (one event-loop thread), in a
lone rank with megatron-core's groups and between real ranks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="counts threads through /proc"
)

COUNT = """
def loops():
    import pathlib
    names = [(t / "comm").read_text().strip() for t in pathlib.Path("/proc/self/task").iterdir()]
    return sum(n.startswith("gloo_") for n in names)

def settled_loops():
    # A loop thread names itself once it runs: on a busy machine, a moment after its
    # group is made. The count once it has held for 0.2 s (at most 5 s).
    import time
    count, since, deadline = loops(), time.monotonic(), time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = loops()
        if now != count:
            count, since = now, time.monotonic()
        elif count and time.monotonic() - since >= 0.2:
            break
    return count
"""


def _run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COUNT) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


LONE_RANK = """
import gc, json, sys, time
import torch
import torch.distributed as dist
from llmbuild.backends.megatron.cpu import apply_cpu_patches
from llmbuild.run import ranks
if sys.argv[-1] == "unshared":
    import llmbuild.run.gloo as gloo
    gloo.share_gloo_device = lambda: None
apply_cpu_patches()
from megatron.core import parallel_state as ps
ranks.join_single_rank_group()
ps.initialize_model_parallel(1, 1)
groups = len(dist.distributed_c10d._world.pg_map)
during = settled_loops()
t = torch.arange(4.0)
dist.all_reduce(t, group=ps.get_data_parallel_group())
dist.all_reduce(t, group=ps.get_tensor_model_parallel_group())
ranks.leave_process_groups()
gc.collect()
time.sleep(0.5)
print(json.dumps({"groups": groups, "during": during, "after": loops(), "sum": t.tolist()}))
"""


def test_lone_rank_megatron_groups_share_one_device():
    shared = _run(LONE_RANK)
    assert shared["groups"] > 10  # megatron's groups, all gloo on a CPU
    assert shared["during"] == 1
    assert shared["after"] <= 1  # torch may hold on to its last default group's device
    assert shared["sum"] == [0.0, 1.0, 2.0, 3.0]
    # torch's own way, for contrast: a device, and a loop thread, per group
    code = LONE_RANK.replace('sys.argv[-1] == "unshared"', "True")
    assert _run(code)["during"] == shared["groups"]


TWO_RANKS = """
import json, os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def rank(r, port, q):
    from llmbuild.run.gloo import share_gloo_device
    share_gloo_device()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=2)
    both, mine0, mine1 = dist.new_group([0, 1]), dist.new_group([0]), dist.new_group([1])
    t = torch.tensor([float(r + 1)])
    dist.all_reduce(t, group=both)
    gathered = [torch.zeros(1), torch.zeros(1)]
    dist.all_gather(gathered, torch.tensor([10.0 * (r + 1)]))
    b = torch.tensor([float(r)])
    dist.broadcast(b, src=1, group=both)
    own = torch.tensor([5.0])
    dist.all_reduce(own, group=mine0 if r == 0 else mine1)
    q.put({"rank": r, "sum": t.item(), "gathered": [g.item() for g in gathered],
           "broadcast": b.item(), "own": own.item(), "loops": settled_loops()})
    dist.destroy_process_group()

if __name__ == "__main__":
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=rank, args=(r, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted((q.get(timeout=120) for _ in procs), key=lambda d: d["rank"])
    for p in procs:
        p.join(60)
    print(json.dumps(got))
"""


def test_two_ranks_share_a_device_across_groups(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(textwrap.dedent(COUNT) + textwrap.dedent(TWO_RANKS))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = json.loads(out.stdout.strip().splitlines()[-1])
    for r in ranks:
        assert r["sum"] == 3.0
        assert r["gathered"] == [10.0, 20.0]
        assert r["broadcast"] == 1.0
        assert r["own"] == 5.0
        assert r["loops"] == 1  # four groups (the default and three more), one device
