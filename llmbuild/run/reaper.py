"""A local Ray cluster ends with the build that started it, however the build ends.

Ray has the kernel kill a local cluster's GCS and raylet when the process that started
them dies, so a build killed with SIGKILL (by the OOM killer, a job scheduler, ``kill -9``)
takes them along; but the raylet's agents (its dashboard and runtime-env agents, Python
processes of about 100 MB each) see their raylet gone, say they exit, and hang there for
good. The reaper is a shell in a session of its own reading a pipe from the build: end of
file means the build is gone without stopping its cluster, and it kills the process
groups the GCS and the raylet lead, which hold the agents. A build that stops its cluster
stops the reaper first."""

from __future__ import annotations

import contextlib
import subprocess

_reaper: subprocess.Popen | None = None


def watch(groups: list[int]) -> None:
    """Kill these process groups when this process dies without calling ``release``."""
    global _reaper
    release()
    if not groups:
        return
    kills = "; ".join(f"kill -s KILL -- -{int(g)} 2>/dev/null" for g in groups)
    with contextlib.suppress(OSError):  # no shell: Ray's own clean-up is all there is
        _reaper = subprocess.Popen(
            ["/bin/sh", "-c", f"read line; {kills}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the build's group does not end it
        )


def release() -> None:
    """Stop watching: the cluster is being stopped in order, or is gone."""
    global _reaper
    reaper, _reaper = _reaper, None
    if reaper is not None:
        reaper.kill()  # before its pipe closes: it kills nothing
        reaper.wait()
        with contextlib.suppress(OSError):
            reaper.stdin.close()
