"""The store on a local path, file:// and memory:// URLs: commit, verify, leases, gc."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from llmbuild.store.fs import FsspecFS, LocalFS, open_fs
from llmbuild.store.gc import collect
from llmbuild.store.lease import try_acquire
from llmbuild.store.records import Record, manifest, output_digest
from llmbuild.store.store import Store
from tests.fixture_backend import reset, set_control
from tests.run.helpers import counts, fixture_build


def _record(name: str, key: str, out) -> Record:
    entries = manifest(out)
    return Record(
        name=name,
        key=key,
        preimage={"k": 1},
        outputs=entries,
        output_digest=output_digest(entries),
        timings={"finished": time.time(), "seconds": 0},
    )


@pytest.fixture(params=["path", "file-url", "fsspec-file", "memory"])
def store(request, tmp_path):
    if request.param == "path":
        return Store(str(tmp_path / "s"))
    if request.param == "file-url":
        return Store(f"file://{tmp_path / 's'}")
    if request.param == "fsspec-file":
        s = Store(str(tmp_path / "s"))
        s.fs = FsspecFS(f"file://{tmp_path / 's'}")
        return s
    return Store(f"memory://llmbuild-test-{time.time_ns()}", work_root=tmp_path / "work")


def test_commit_read_verify(store):
    key = "ab" * 32
    out = store.scratch("stage:x", key)
    (out / "sub").mkdir()
    (out / "sub" / "w.bin").write_bytes(b"weights")
    (out / "a.txt").write_text("hello")
    assert not store.lookup(key).cached
    rec = store.commit(out, _record("stage:x", key, out))
    assert store.lookup(key).cached
    assert store.record(key).output_digest == rec.output_digest
    assert store.verify(rec) is None
    local = store.local_dir(rec)
    assert (local / "sub" / "w.bin").read_bytes() == b"weights"
    assert store.last_preimage("stage:x") == {"k": 1}
    # The first committed result is canonical: a second commit keeps the first.
    again = store.scratch("stage:x", key)
    (again / "a.txt").write_text("different")
    assert store.commit(again, _record("stage:x", key, again)).output_digest == rec.output_digest


def test_an_uncommitted_artifact_is_invisible(store):
    key = "cd" * 32
    out = store.scratch("stage:y", key)
    (out / "x").write_text("partial")
    assert not store.lookup(key).cached
    assert store.artifacts() == []
    shutil.rmtree(out)  # a remote store's scratch is in the temp dir


def test_leases_exclude_and_expire(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBUILD_LEASE_TTL", "0.6")
    fs = LocalFS(tmp_path)
    first = try_acquire(fs, "leases/k", {"build": "a"})
    assert first is not None
    assert try_acquire(fs, "leases/k", {"build": "b"}) is None
    time.sleep(1.0)  # the heartbeat keeps it alive
    assert try_acquire(fs, "leases/k", {"build": "b"}) is None
    first._stop.set()  # the holder dies: no more heartbeats
    first._thread.join()
    time.sleep(0.8)
    second = try_acquire(fs, "leases/k", {"build": "b"})
    assert second is not None and json.loads(fs.read_bytes("leases/k"))["build"] == "b"
    second.release()
    assert not fs.exists("leases/k")


def test_concurrent_takers_of_a_stale_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBUILD_LEASE_TTL", "5")
    fs = LocalFS(tmp_path)
    fs.write_bytes("leases/k", json.dumps({"build": "dead", "heartbeat": 0}).encode())
    winners = []

    def take(i):
        lease = try_acquire(fs, "leases/k", {"build": str(i)})
        if lease is not None:
            winners.append(lease)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    winners[0].release()


def test_fixture_pipeline_on_a_memory_store(project, fixture_env):
    url = f"memory://pipeline-{time.time_ns()}"
    assert fixture_build(project, url).count("built") == 14
    reset()
    assert fixture_build(project, url).count("cached") == 14
    assert counts() == {}


def test_status_of_a_remote_store_fetches_no_artifact(project, fixture_env, tmp_path, monkeypatch):
    """status reads records; only a samples eval's texts are fetched, never every
    artifact of the build (a trained model may be gigabytes)."""
    from llmbuild.cli import main

    url = f"memory://status-{time.time_ns()}"
    fixture_build(project, url)
    monkeypatch.setenv("LLMBUILD_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["status", str(project), "--store", url]) == 0
    assert not (tmp_path / "cache" / "artifacts").exists()


def test_export_says_whose_fault_a_failed_copy_is(
    project, fixture_env, tmp_path, monkeypatch, capsys
):
    """A --to that cannot be written is said as the destination's; a remote store's
    artifact that cannot be fetched into an unwritable cache dir, as the cache dir's."""
    from llmbuild.cli import main

    url = f"memory://export-{time.time_ns()}"
    fixture_build(project, url)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("LLMBUILD_CACHE_DIR", str(tmp_path / "cache"))
    to = tmp_path / "a-file" / "out"
    assert main(["export", str(project), "--store", url, "--to", str(to)]) == 2
    assert f"error: cannot write to {to}: " in capsys.readouterr().err
    monkeypatch.setenv("LLMBUILD_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    assert main(["export", str(project), "--store", url, "--to", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "cannot write to" not in err and "LLMBUILD_CACHE_DIR" in err, err


def test_gc_keeps_what_recent_builds_reference(project, fixture_env, tmp_path):
    store = tmp_path / "store"
    fixture_build(project, store)
    fixture_build(project, store, ["stage.sft.lr=1e-5"])
    s = Store(str(store))
    before = len(s.artifacts())
    report = collect(s, keep_builds=1, dry_run=True)
    assert len(s.artifacts()) == before
    assert sorted(r.split()[0] for r in report.removed) == sorted(
        ["stage:sft", "stage:dpo", "eval:ppl@sft", "eval:gen@sft", "export:hf@dpo"]
    )
    collect(s, keep_builds=1)
    assert len(s.artifacts()) == before - 5
    reset()
    assert fixture_build(project, store, ["stage.sft.lr=1e-5"]).count("cached") == 14


def test_gc_keeps_the_last_good_build_through_a_failed_one(project, fixture_env, tmp_path):
    """``--keep 1`` after a good build and a failed one keeps the good build's artifacts
    (and what the failed one built), not only the failed one's."""
    store = tmp_path / "store"
    assert fixture_build(project, store).ok
    set_control(fail=["stage:sft"])
    failed = fixture_build(project, store, ["stage.sft.lr=1e-5"])
    assert not failed.ok
    s = Store(str(store))
    before = len(s.artifacts())
    report = collect(s, keep_builds=1)
    assert report.removed == [] and len(s.artifacts()) == before
    reset()
    assert fixture_build(project, store).count("cached") == 14


def test_open_fs_kinds(tmp_path):
    assert isinstance(open_fs(tmp_path), LocalFS)
    assert isinstance(open_fs(f"file://{tmp_path}"), LocalFS)
    assert isinstance(open_fs("memory://x"), FsspecFS)


def test_what_the_store_creates_follows_the_umask(project, fixture_env, tmp_path):
    """A team store stays readable: with umask 022, directories are 755 and files 644."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        store = tmp_path / "store"
        assert fixture_build(project, store).ok
    finally:
        os.umask(old)
    modes = {
        p.relative_to(store).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in store.rglob("*")
        if not p.name.startswith(".")
    }
    dirs = {m for p, m in modes.items() if (store / p).is_dir()}
    files = {m for p, m in modes.items() if (store / p).is_file()}
    assert dirs == {0o755} and files == {0o644}, modes
