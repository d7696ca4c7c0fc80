"""The store's filesystem failing under a build: a store path that is a file, a store on
a read-only filesystem, a disk that fills up. Each is said plainly (no traceback), and
nothing half-written is left. The read-only and full filesystems are real mounts (a small
tmpfs), so these tests need root with mount rights, as CI has."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from llmbuild.cli import main
from llmbuild.errors import describe_os_error
from tests.fixture_backend import set_control
from tests.run.helpers import fixture_build


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}): needs root with mount rights")


@contextlib.contextmanager
def _mounted(target: Path, *args: str):
    target.mkdir(parents=True, exist_ok=True)
    _mount(*args, str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_store_that_is_a_file_is_named(project, tmp_path, capsys):
    store = tmp_path / "store"
    store.write_text("not a store")
    for argv in (["plan", str(project)], ["build", str(project)], ["runs"], ["gc"]):
        assert main([*argv, "--store", str(store)]) == 2, argv
        err = capsys.readouterr().err
        assert f"the store {store} is a file, not a directory" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root")
def test_a_read_only_store_plans_and_says_why_it_cannot_build(
    project, fixture_env, tmp_path, capsys
):
    built = tmp_path / "built"
    assert fixture_build(project, built).ok
    with _mounted(tmp_path / "ro", "--bind", str(built)) as ro:
        _mount("-o", "remount,bind,ro", str(ro))
        assert main(["plan", str(project), "--store", str(ro)]) == 0
        assert main(["status", str(project), "--store", str(ro)]) == 0
        capsys.readouterr()
        # All of it cached: read, not recorded.
        assert main(["build", str(project), "--store", str(ro), "--executor", "inline"]) == 0
        captured = capsys.readouterr()
        assert captured.out.strip().endswith("14 nodes, 14 cached"), captured.out
        assert "note: this build is not recorded: the store cannot be written" in captured.err
        # Work to do: said before anything runs.
        argv = ["build", str(project), "--store", str(ro), "--executor", "inline"]
        assert main([*argv, "--set", "stage.sft.lr=1e-5"]) == 1
        err = capsys.readouterr().err
        assert "Read-only file system" in err and "use a writable store (--store)" in err, err
        assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem needs root")
def test_a_full_disk_is_named_and_leaves_nothing_half_written(project, fixture_env, tmp_path):
    from llmbuild.store.fs import LocalFS

    with _mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as store:
        set_control(fill={"stage:pretrain": 8 << 20})
        outcome = fixture_build(project, store)
        result = outcome.results["stage:pretrain"]
        assert result.state == "failed", result.detail
        assert result.detail.startswith("the disk is full ("), result.detail
        assert outcome.results["source:books"].state == "built"  # what fits is kept
        assert not list((store / "tmp").iterdir())  # the failed node's temp dir is gone
        # An atomic write that the disk cannot hold leaves no part of itself behind.
        fs = LocalFS(store)
        with pytest.raises(OSError) as e:
            fs.write_bytes("builds/big.json", b"x" * (8 << 20))
        assert "the disk is full" in describe_os_error(e.value)
        assert not [p.name for p in (store / "builds").iterdir() if "big" in p.name]
