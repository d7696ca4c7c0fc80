"""kill -9 in the middle of a node, and two builds of one spec at once (subprocesses)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, artifact_dirs
from tests.fixture_backend import invocations, reset, set_control
from tests.run.helpers import counts, fixture_build


def _spawn(
    spec: Path, store: Path, env_extra: dict[str, str], executor: str = "inline"
) -> subprocess.Popen:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.run.helpers", str(spec), str(store), executor],
        cwd=REPO,
        env=env,
        start_new_session=True,  # a process group of its own, as a job scheduler gives
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _plan(spec: Path, store: Path) -> dict:
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store

    s = Store(str(store))
    return {n.name: n for n in plan_spec(load_spec(spec), store=s, cache=s.cache).plan.nodes}


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_mid_node_leaves_no_partial_artifact(project, fixture_env, tmp_path, monkeypatch):
    store = tmp_path / "store"
    set_control(sleep={"stage:pretrain": 60})
    proc = _spawn(project, store, {"LLMBUILD_LEASE_TTL": "2"})
    _wait_for(lambda: "stage:pretrain" in invocations())
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not artifact_dirs(store, "stage:pretrain")  # no partial artifact
    assert artifact_dirs(store, "tokenizer")  # what finished before the kill is kept
    leases = list((store / "leases").iterdir())
    assert len(leases) == 1  # the dead build's lease, left behind
    assert len(list((store / "running").iterdir())) == 1  # and its list of keys
    (scratch,) = (store / "tmp").iterdir()  # and the temp dir it was building into
    monkeypatch.setenv("LLMBUILD_LEASE_TTL", "2")
    # Its holder was a process of this host, and it is gone: the lease is free at once.
    nodes = _plan(project, store)
    assert nodes["stage:pretrain"].status == "resume"
    # Held from another host, it waits for the heartbeat to go stale.
    (lease,) = leases
    holder = json.loads(lease.read_text())
    lease.write_text(json.dumps({**holder, "host": "elsewhere", "heartbeat": time.time()}))
    assert _plan(project, store)["stage:pretrain"].status == "running elsewhere"
    time.sleep(2.2)
    nodes = _plan(project, store)
    assert nodes["stage:pretrain"].status == "resume"
    assert nodes["stage:pretrain"].reason.startswith("resume from step ")
    assert nodes["tokenizer"].status == "cached"

    set_control()
    reset()
    # The killed build's list of keys, and another host's whose heartbeat stopped an hour
    # ago (maybe only a clock, or a network, away): the next build here clears the first.
    (killed,) = (store / "running").iterdir()
    elsewhere = store / "running" / ("e" * 32)
    listed = {**json.loads(killed.read_text()), "host": "elsewhere", "pid": os.getpid()}
    elsewhere.write_text(json.dumps({**listed, "heartbeat": time.time() - 3600}))
    outcome = fixture_build(project, store)  # takes the stale lease over
    assert outcome.ok
    assert counts()["stage:pretrain"] == 1 and "tokenizer" not in counts()
    assert not any((store / "leases").iterdir())
    assert not killed.exists() and elsewhere.exists()
    assert not scratch.exists()  # the killed build's temp dir, cleared by the new holder
    # gc removes a killed build's temp dir at once (no live lease), not in an hour.
    from llmbuild.store.gc import SCRATCH_GRACE, collect
    from llmbuild.store.store import Store

    scratch.mkdir()
    (scratch / "partial.bin").write_bytes(b"x" * 100)
    os.utime(scratch, (time.time() - SCRATCH_GRACE - 1,) * 2)
    report = collect(Store(str(store)))
    assert report.scratch_removed == 1 and not scratch.exists() and not report.removed
    # and the other host's stale running/ file, which said which keys it was making
    assert report.stale_removed == 1 and not any((store / "running").iterdir())


def test_two_concurrent_builds_build_each_node_once(project, fixture_env, tmp_path):
    store = tmp_path / "store"
    set_control(sleep={"source:books": 1, "stage:pretrain": 1.5, "stage:sft": 1})
    procs = [_spawn(project, store, {}) for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(counts().values()) == [1] * 14, counts()
    assert all("summary: 14 nodes" in out for out in outputs)
    assert any("waiting" in out for out in outputs)  # one build waited on the other's lease


@pytest.mark.parametrize(("executor", "group"), [("inline", False), ("ray", False), ("ray", True)])
def test_sigterm_ends_a_build_as_ctrl_c_does(
    project, fixture_env, tmp_path, executor, group, capsys
):
    """A scheduler's SIGTERM: the lease is released, no temp dir is left, the checkpoint
    stays for a resume, and the build is recorded as interrupted and listed by `runs`;
    under Ray too, with no signal dump from Ray's workers, and when the signal goes to
    the build's whole process group (Ray's cluster included), as Slurm sends it."""
    from llmbuild.cli import main

    store = tmp_path / "store"
    set_control(sleep={"stage:pretrain": 60})
    proc = _spawn(project, store, {}, executor)
    _wait_for(lambda: "stage:pretrain" in invocations(), timeout=120)
    time.sleep(0.5)
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    out, _ = proc.communicate(timeout=90)
    assert time.monotonic() - began < 30, out  # not a minute waiting on a stopped cluster
    assert proc.returncode == 143 and "Traceback" not in out, out  # 128 + SIGTERM
    assert out.rstrip().splitlines()[-1] == "terminated", out
    assert "SIGTERM received" not in out and "*** " not in out, out
    assert main(["runs", "--store", str(store)]) == 0
    assert "INTERRUPTED" in capsys.readouterr().out
    assert not list((store / "leases").iterdir())
    assert not list((store / "tmp").iterdir())
    (build,) = [json.loads(p.read_text()) for p in (store / "builds").glob("*.json")]
    assert build["interrupted"] and not build["ok"]
    assert build["nodes"]["tokenizer"]["state"] == "built"
    assert build["nodes"]["stage:pretrain"]["state"] == "interrupted"
    assert _plan(project, store)["stage:pretrain"].status == "resume"
    log = store / "work" / build["nodes"]["stage:pretrain"]["key"] / "node.log"
    last = log.read_text().rstrip().splitlines()[-1]  # its log says how it ended
    assert " ERROR interrupted" in last, last
    assert log.read_text().count("interrupted") == 1


def test_gc_keeps_what_a_running_build_has_made(project, fixture_env, tmp_path):
    from llmbuild.store.gc import collect
    from llmbuild.store.store import Store

    store = tmp_path / "store"
    set_control(sleep={"stage:pretrain": 3})
    proc = _spawn(project, store, {})
    _wait_for(lambda: "stage:pretrain" in invocations())
    report = collect(Store(str(store)), keep_builds=0)
    assert report.removed == [] and any("tokenizer" in k for k in report.kept)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "14 nodes, 14 built" in out


def test_a_build_waiting_for_a_lease_says_so_once(project, fixture_env, tmp_path, monkeypatch):
    """Another host's build holds a node: this one says it waits, once, and takes the
    node over when that holder's heartbeat goes stale."""
    from llmbuild.plan import plan_spec
    from llmbuild.run.build import BuildOptions, PlainReporter, build
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store
    from tests.fixture_backend import fixture_registry

    monkeypatch.setenv("LLMBUILD_LEASE_TTL", "1.5")
    store = tmp_path / "store"
    key = plan_spec(load_spec(project), registry=fixture_registry()).keys["stage:pretrain"].key
    (store / "leases").mkdir(parents=True)
    holder = {"build": "f" * 32, "host": "elsewhere", "pid": 1, "token": "t"}
    (store / "leases" / key).write_text(json.dumps({**holder, "heartbeat": time.time()}))
    log = io.StringIO()
    outcome = build(load_spec(project), Store(str(store)), BuildOptions(executor="inline",
                    live=False), PlainReporter(log, interval=0), registry=fixture_registry())  # fmt: skip
    assert outcome.ok
    waits = [line for line in log.getvalue().splitlines() if "waiting" in line]
    assert len(waits) == 1 and "stage:pretrain" in waits[0] and "elsewhere" in waits[0], waits


def test_a_killed_builds_checkpoint_is_named_and_gc_removes_it_when_asked(
    project, fixture_env, tmp_path, capsys
):
    """After kill -9: runs and show name the unfinished node's checkpoint and log; gc
    keeps the checkpoint and says so, and removes it (not its log) only with
    --checkpoints, never while a build holds its key."""
    from llmbuild.cli import main

    store = tmp_path / "store"
    set_control(sleep={"stage:pretrain": 60})
    proc = _spawn(project, store, {})
    _wait_for(lambda: "stage:pretrain" in invocations())
    _wait_for(lambda: any((store / "work").glob("*/checkpoint.json")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (marker,) = (store / "work").glob("*/checkpoint.json")
    work, step = marker.parent, json.loads(marker.read_text())["step"]
    said = f"a resumable checkpoint at step {step} and its log are in {work}"
    assert main(["runs", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"not recorded: a build was killed making stage:pretrain: {said}" in out, out
    for name in ("stage:pretrain", "pretrain", work.name[:12]):
        assert main(["show", name, "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert f"stage:pretrain is not built in {store}: {said}; the next build" in err, err

    assert main(["gc", "--store", str(store), "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert "kept the work of 1 node that did not finish (" in out, out
    assert f"  stage:pretrain: {said.replace(' are in ', ' in ')} (" in out, out
    assert main(["gc", "--store", str(store), "--checkpoints", "--dry-run"]) == 0
    assert "would remove the work of 1 node that did not finish" in capsys.readouterr().out
    assert marker.exists()
    # Another host's build holds the key: its checkpoint is not gc's to remove.
    lease = store / "leases" / work.name
    holder = {"build": "f" * 32, "host": "elsewhere", "pid": 1, "token": "t"}
    lease.write_text(json.dumps({**holder, "heartbeat": time.time()}))
    assert main(["gc", "--store", str(store), "--checkpoints"]) == 0
    assert "the work of" not in capsys.readouterr().out and marker.exists()
    lease.unlink()
    assert main(["gc", "--store", str(store), "--checkpoints"]) == 0
    out = capsys.readouterr().out
    assert "removed the work of 1 node that did not finish (" in out, out
    assert [p.name for p in work.iterdir()] == ["node.log"] and not lease.exists()
    assert _plan(project, store)["stage:pretrain"].status == "build"  # starts over
    assert main(["gc", "--store", str(store), "--checkpoints"]) == 0
    assert "the work of" not in capsys.readouterr().out  # a log alone is not listed


def _descendants(pid: int) -> list[int]:
    """The processes under ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_build_killed_with_sigkill_leaves_no_process_of_its_cluster(
    project, fixture_env, tmp_path
):
    """The raylet's agents, which Ray leaves hanging when the build and its raylet die, go
    with it."""
    pytest.importorskip("ray")
    store = tmp_path / "store"
    set_control(sleep={"stage:pretrain": 60})
    proc = _spawn(project, store, {}, executor="ray")
    cluster: list[int] = []
    try:
        _wait_for(lambda: "stage:pretrain" in invocations(), timeout=120)
        cluster = _descendants(proc.pid)
        titles = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in cluster]
        assert any(b"DashboardAgent" in t or b"RuntimeEnvAgent" in t for t in titles), titles
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_for(lambda: not [pid for pid in cluster if _alive(pid)], timeout=30)
    finally:
        for pid in cluster:  # what a failed run leaves: this test started them
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
