"""Leases: one builder per key at a time, across processes and machines sharing a store.

A lease is a small file created exclusively, refreshed by a heartbeat thread. A lease
whose heartbeat is older than the TTL belongs to a dead build and is taken over, one
taker at a time.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from llmbuild.store.fs import FsspecFS, LocalFS


def lease_ttl() -> float:
    """Seconds without a heartbeat after which a lease is stale ($LLMBUILD_LEASE_TTL)."""
    return float(os.environ.get("LLMBUILD_LEASE_TTL", "30"))


def owner_info(build_id: str) -> dict[str, Any]:
    return {"build": build_id, "host": socket.gethostname(), "pid": os.getpid()}


def describe(holder: dict[str, Any]) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (
        f"build {holder.get('build', '?')[:8]} on {holder.get('host', '?')} "
        f"pid {holder.get('pid', '?')} (heartbeat {age:.0f}s ago)"
    )


def _read(fs: LocalFS | FsspecFS, rel: str) -> dict[str, Any] | None:
    try:
        data = json.loads(fs.read_bytes(rel))
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as stale


def _gone(holder: dict[str, Any]) -> bool:
    """Whether the holder was a process of this host that has ended (a build that was
    killed or interrupted): its lease need not wait out the TTL."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (KeyError, TypeError, ValueError, PermissionError, OSError):
        return False
    return False


def _stale(holder: dict[str, Any], ttl: float) -> bool:
    try:
        return time.time() - float(holder["heartbeat"]) > ttl or _gone(holder)
    except (KeyError, TypeError, ValueError):
        return True


def live_holder(fs: LocalFS | FsspecFS, rel: str) -> dict[str, Any] | None:
    """The holder of a live lease, or None when there is none or it is stale."""
    holder = _read(fs, rel)
    if holder is None or _stale(holder, lease_ttl()):
        return None
    return holder


class Lease:
    """A held lease, refreshed in the background until released."""

    def __init__(self, fs: LocalFS | FsspecFS, rel: str, info: dict[str, Any]) -> None:
        self.fs, self.rel, self.info = fs, rel, info
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease {rel}")
        self._thread.start()

    def _beat(self) -> None:
        interval = max(lease_ttl() / 4, 0.05)
        while not self._stop.wait(interval):
            holder = _read(self.fs, self.rel)
            if holder is None or holder.get("token") != self.info["token"]:
                self.lost = True  # taken over: we were presumed dead
                return
            self.info["heartbeat"] = time.time()
            try:
                self.fs.write_bytes(self.rel, json.dumps(self.info).encode())
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        holder = _read(self.fs, self.rel)
        if holder is not None and holder.get("token") == self.info["token"]:
            self.fs.remove(self.rel)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_acquire(fs: LocalFS | FsspecFS, rel: str, owner: dict[str, Any]) -> Lease | None:
    """Take the lease if it is free or stale; None while another build holds it.

    Takeovers are serialised by a second, exclusively created file: under it the stale
    lease is read again and overwritten only if it is still the same stale lease."""
    info = dict(owner, token=uuid.uuid4().hex, heartbeat=time.time())
    data = json.dumps(info).encode()
    if fs.create_exclusive(rel, data):
        return Lease(fs, rel, info)
    holder = _read(fs, rel)
    if holder is not None and not _stale(holder, lease_ttl()):
        return None
    guard = f"{rel}.takeover"
    if not fs.create_exclusive(guard, data):
        try:  # a taker that died mid-takeover leaves its guard: clear it once stale
            if time.time() - fs.mtime(guard) > lease_ttl():
                fs.remove(guard)
        except (FileNotFoundError, OSError):
            pass
        return None
    try:
        current = _read(fs, rel)
        if current is None:
            return Lease(fs, rel, info) if fs.create_exclusive(rel, data) else None
        if current != holder or not _stale(current, lease_ttl()):
            return None
        fs.write_bytes(rel, data)
        return Lease(fs, rel, info)
    finally:
        fs.remove(guard)


def clear_stale(fs: LocalFS | FsspecFS, rel: str, this_host: bool = False) -> bool:
    """Remove the lease file ``rel`` if its holder has ended or stopped beating (a killed
    build's); with ``this_host``, only if its holder was a process of this host that has
    ended, never another host's, however late its heartbeat. Under the takeover guard, so
    that a build taking the lease over meanwhile keeps it. Whether it was removed."""
    guard = f"{rel}.takeover"
    if not fs.create_exclusive(guard, b"{}"):
        return False
    try:
        holder = _read(fs, rel)
        if holder is None or not (_gone(holder) if this_host else _stale(holder, lease_ttl())):
            return False
        fs.remove(rel)
        return True
    finally:
        fs.remove(guard)
