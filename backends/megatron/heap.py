"""The training process's heap: memory a step frees stays with the process for the next.

glibc's malloc hands each buffer of 128 KiB or more to the kernel as its own mapping, and
gives the top of a heap back once 128 KiB of it is free; it raises both thresholds as
mapped buffers are freed, but a step's mix of sizes kept it giving memory back. A training
step allocates and frees the same activations and gradients every time, so on CPU each
step took its megabytes back from the kernel page by page: 1,200-1,500 page faults and a
few milliseconds of system time a step for a 4 x 128 model, on a Ray worker's main thread
as on a Ray Train rank's thread. With the thresholds raised for the stage's life, the
next step reuses the memory the last one freed; the process holds on to what its peak
needed, as it needs that much again each step. Nothing computed changes: the same values
land in other pages."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest (64-bit): buffers up to this come from a heap
TRIM_THRESHOLD = 1 << 30  # free memory a heap's top may hold before it is given back
DEFAULT_THRESHOLD = 128 << 10  # glibc's initial value of both


def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt and malloc_trim); None elsewhere (macOS,
    musl), where the heap is left as it is."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (glibc's own symbol)
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


@contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Raise malloc's thresholds for the block; after it, give the heaps' free memory back
    to the kernel and trim at glibc's initial threshold again (a process that hosts other
    nodes next, as the inline executor's does, returns what it frees as before; buffers up
    to 32 MiB keep coming from its heaps, as glibc's growing threshold would make them).
    Yields whether the heap could be tuned."""
    libc = _libc()
    tuned = libc is not None and bool(
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    try:
        yield tuned
    finally:
        if tuned:
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
            libc.malloc_trim(0)
