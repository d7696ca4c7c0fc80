"""SIGTERM ends a build as Ctrl-C does: a cluster scheduler or ``timeout`` stopping a
build gets the same cleanup (leases released, temp dirs removed, the build recorded as
interrupted) instead of a raw signal dump."""

from __future__ import annotations

import signal
import threading


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def on_sigterm_interrupt() -> None:
    """Make SIGTERM raise KeyboardInterrupt in this process (from its main thread only,
    where Python delivers signals); call it again after a library that takes SIGTERM
    (``ray.init`` does)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
