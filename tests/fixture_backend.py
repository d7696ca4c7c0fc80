"""A fixture backend for exercising the planner, store and scheduler (not a feature).

It stands in for every built-in backend under the same names and configs. A node's
output is a hash of its config and its inputs' output files; each run appends the node
name to ``invocations.log``. ``control.json`` (both in $LLMBUILD_FIXTURE_DIR) can make
named nodes fail, sleep (reporting progress), log a library's warning, write a large file (``fill``), append to a
file of theirs (``edit``: a user editing it mid-build), or produce random output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from llmbuild.backend import Backend, Resources
from llmbuild.registry import Registry, default_registry

BUILT_INS = ("data", "tokenizer", "tokenize", "megatron", "eval", "export")


def fixture_dir() -> Path:
    return Path(os.environ["LLMBUILD_FIXTURE_DIR"])


def control() -> dict[str, Any]:
    path = fixture_dir() / "control.json"
    return json.loads(path.read_text()) if path.exists() else {}


def set_control(**values: Any) -> None:
    (fixture_dir() / "control.json").write_text(json.dumps(values))


def invocations() -> list[str]:
    path = fixture_dir() / "invocations.log"
    return path.read_text().split() if path.exists() else []


def timings() -> dict[str, tuple[float, float, int]]:
    """node -> (start, end, pid) of its last run."""
    path = fixture_dir() / "timings.log"
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return {r[0]: (float(r[1]), float(r[2]), int(r[3])) for r in rows}


def reset() -> None:
    for name in ("control.json", "invocations.log", "timings.log"):
        (fixture_dir() / name).unlink(missing_ok=True)


def allreduce_ranks(config: dict[str, Any], info: Any) -> Path | None:
    """Rank function: all-reduce (rank + 1) over the group; rank 0 writes the sum."""
    import torch
    import torch.distributed as dist

    if config.get("user_error") and info.rank == 1:
        from llmbuild.errors import UserError

        raise UserError("rank 1 was told the user made a mistake")
    t = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(t)
    if info.rank != 0:
        return None
    out = Path(config["scratch"]) / f"rank0-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "allreduce.json").write_text(
        json.dumps({"sum": t.item(), "world_size": dist.get_world_size()})
    )
    return out


class FixtureBackend(Backend):
    def __init__(self, name: str, version: str | None = None) -> None:
        real = default_registry().get(name)
        self.name, self.version, self.Config = name, version or real.version, real.Config
        self.inputs, self.outputs = real.inputs, real.outputs
        self._real = real

    def resources(self, config: Any) -> Resources:
        return self._real.resources(config)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FixtureBackend, (self.name, self.version))

    def run(self, ctx: Any) -> None:
        ctl = control()
        started = time.time()
        with open(fixture_dir() / "invocations.log", "a") as log:
            log.write(f"{ctx.node}\n")
        steps = ctl.get("sleep", {}).get(ctx.node, 0)
        for i in range(int(steps * 10)):
            ctx.progress.update(completed=i + 1, total=int(steps * 10), unit="ticks")
            ctx.mark_checkpoint(i + 1)
            time.sleep(0.1)
        if ctx.node in ctl.get("library_warning", []):  # as lm-eval's or transformers' are
            logging.getLogger("some.library").warning("%s: a library's warning", ctx.node)
        if ctx.node in ctl.get("edit", {}):
            with open(ctl["edit"][ctx.node], "a") as f:
                f.write("An edit.\n")
        if ctx.node in ctl.get("mistake", []):  # a node's message to the user, named
            from llmbuild.errors import UserError

            raise UserError(f"{ctx.node}: the data says no")
        if ctx.node in ctl.get("fail", []):
            (ctx.work_dir / "partial").mkdir(exist_ok=True)  # what a real node leaves
            (ctx.work_dir / "partial" / "shard.jsonl").write_text("{}\n" * 100)
            raise RuntimeError(f"{ctx.node} was told to fail")
        if ctx.node in ctl.get("fill", {}):  # a large output, to fill a small disk
            with open(ctx.out_dir / "fill.bin", "wb") as f:
                for _ in range(ctl["fill"][ctx.node] >> 20):
                    f.write(b"\0" * (1 << 20))
        h = hashlib.sha256(json.dumps(ctx.config.model_dump(mode="json"), sort_keys=True).encode())
        for slot in sorted(ctx.inputs):
            for f in sorted(ctx.inputs[slot].path.rglob("*")):
                if f.is_file() and f.name != "record.json":
                    h.update(f.read_bytes())
        if ctx.node in ctl.get("random", []):
            h.update(os.urandom(16))
        digest = h.hexdigest()
        (ctx.out_dir / "out.txt").write_text(digest)
        with open(fixture_dir() / "timings.log", "a") as log:
            log.write(f"{ctx.node} {started} {time.time()} {os.getpid()}\n")
        ctx.metrics["value"] = int(digest[:8], 16) / 2**32
        if ctx.node in ctl.get("random", []):  # and a metric that surely moves: the run's number
            runs = (fixture_dir() / "invocations.log").read_text().split()
            ctx.metrics["run"] = runs.count(ctx.node)
        if ctx.resources.ranks > 1 or ctx.node in ctl.get("allreduce", []):
            told = ctx.node in ctl.get("rank_user_error", [])
            result = ctx.run_ranks(
                allreduce_ranks, {"scratch": str(ctx.work_dir), "user_error": told}
            )
            data = json.loads((result / "allreduce.json").read_text())
            (ctx.out_dir / "allreduce.json").write_text(json.dumps(data))
            ctx.metrics["allreduce_sum"] = data["sum"]


def fixture_registry(
    versions: dict[str, str] | None = None, group: str = "llmbuild.fixture-backends"
) -> Registry:
    """Fixture backends under the built-in names; ``versions`` overrides their versions
    (a version bump changes keys, never the fixture's output). With ``group`` the real
    ``llmbuild.backends``, the other backends installed stay as they are."""
    registry = Registry(group=group)
    for name in BUILT_INS:
        registry.register(FixtureBackend(name, (versions or {}).get(name)), replace=True)
    return registry
