"""One gloo device for all of a process's gloo process groups.

torch gives each gloo process group a device of its own, and each device runs an event
loop thread that wakes every 10 ms. megatron-core creates about twenty groups per rank
(tensor, pipeline, data, context, embedding, expert and their gloo twins), so a lone CPU
rank carried twenty such threads, over 2,000 wake-ups a second: on a machine whose cores
all run the rank's torch threads each wake-up can stall one of them (a small model's
training steps ran about 20% faster once the groups shared a device). gloo is built for
many contexts (groups) on one device; torch only does not ask for it. After ``share_gloo_device()`` every gloo group this process
creates uses one device, and so one loop thread.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

_DEVICES: list[Any] = []
"""The shared device(s); dropped by ``release_gloo_device`` once the groups are gone."""


def share_gloo_device() -> None:
    """Make the gloo process groups this process creates from now on share one device.

    torch creates a group's backend as ``ProcessGroupGloo(store, rank, size, timeout=)``,
    which opens a new device; this puts in its place a subclass that passes the shared
    device through gloo's own options. Where this torch has no such options the groups
    keep a device each: slower, never wrong."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        return
    import torch.distributed.distributed_c10d as c10d

    base = c10d.ProcessGroupGloo
    if getattr(base, "shares_device", False):
        return
    if not all(hasattr(base, a) for a in ("_Options", "create_default_device", "create_device")):
        return

    class SharedDeviceGloo(base):  # type: ignore[misc, valid-type]
        shares_device = True

        def __init__(
            self, store: Any, rank: int, size: int, timeout: Any = timedelta(minutes=30)
        ) -> None:
            if isinstance(timeout, base._Options):  # already given its options
                super().__init__(store, rank, size, timeout)
                return
            options = base._Options()
            options._devices = _shared_devices(base)
            options._timeout = timeout
            options._threads = 2 * len(options._devices)  # torch's own choice
            super().__init__(store, rank, size, options)

    SharedDeviceGloo.__name__ = SharedDeviceGloo.__qualname__ = base.__name__
    c10d.ProcessGroupGloo = SharedDeviceGloo


def _shared_devices(base: Any) -> list[Any]:
    """The devices torch would open for a group (one per interface named in
    ``GLOO_SOCKET_IFNAME``, else its default one), opened once."""
    if not _DEVICES:
        names = [n for n in os.environ.get("GLOO_SOCKET_IFNAME", "").split(",") if n]
        if names:
            _DEVICES.extend(base.create_device(interface=n) for n in names)
        else:
            _DEVICES.append(base.create_default_device())
    return list(_DEVICES)


def release_gloo_device() -> None:
    """Forget the shared device once this process's groups are destroyed: it closes with
    the last group that used it, and the next groups get a new one."""
    _DEVICES.clear()
