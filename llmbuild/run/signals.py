"""SIGTERM ends a build as Ctrl-C does: a cluster scheduler or ``timeout`` stopping a
build gets the same cleanup (leases released, temp dirs removed, the build recorded as
interrupted) instead of a raw signal dump. Which of the two stopped it is remembered, so
that the exit status still tells them apart (130 for Ctrl-C, 143 for SIGTERM), as job
schedulers expect."""

from __future__ import annotations

import signal
import threading

_terminated_by_sigterm = False


def _terminated(signum: int, frame: object) -> None:
    global _terminated_by_sigterm
    _terminated_by_sigterm = True
    raise KeyboardInterrupt


def on_sigterm_interrupt() -> None:
    """Make SIGTERM raise KeyboardInterrupt in this process (from its main thread only,
    where Python delivers signals); call it again after a library that takes SIGTERM
    (``ray.init`` does)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def interrupted_exit() -> tuple[int, str]:
    """The exit status and word for a KeyboardInterrupt that stopped this process:
    (143, "terminated") if SIGTERM raised it, else Ctrl-C's (130, "interrupted"), the
    shell's 128 + the signal number. It forgets the SIGTERM, so the next stop is told
    afresh."""
    global _terminated_by_sigterm
    if _terminated_by_sigterm:
        _terminated_by_sigterm = False
        return 128 + signal.SIGTERM, "terminated"
    return 128 + signal.SIGINT, "interrupted"
