"""The training rank's heap (``backends/megatron/heap.py``): inside ``keep_freed_memory``
the buffers a step frees are reused by the next without the kernel faulting their pages
in again; after it, free memory goes back to the kernel. Run in a child process, on a
thread as a Ray rank's loop runs, from glibc's initial thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from llmbuild.backends.megatron import heap

CHILD = """
import json, resource, threading
from llmbuild.backends.megatron import heap

libc = heap._libc()
libc.mallopt(heap.M_MMAP_THRESHOLD, heap.DEFAULT_THRESHOLD)  # glibc's initial values,
libc.mallopt(heap.M_TRIM_THRESHOLD, heap.DEFAULT_THRESHOLD)  # not grown by earlier frees

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def steps():  # a step's activations: buffers of 1-4 MiB, written, then freed
    began = faults()
    for _ in range(20):
        held = [bytearray(size << 20) for size in (1, 2, 4, 3)]
        del held
    return faults() - began

out = {}
def loop():
    out["default"] = steps()
    with heap.keep_freed_memory() as tuned:
        steps()  # the heap grows once
        out["kept"], out["tuned"] = steps(), tuned
    out["after"] = steps()
thread = threading.Thread(target=loop)
thread.start()
thread.join()
print(json.dumps(out))
"""


@pytest.mark.skipif(heap._libc() is None, reason="the heap is tuned only under glibc")
def test_steps_reuse_freed_memory_inside_and_return_it_after():
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    )
    out = json.loads(done.stdout)
    assert out["tuned"] is True
    pages = 20 * (1 + 2 + 4 + 3) * 256  # every page of every buffer, 4 KiB pages
    assert out["default"] > pages // 2  # each buffer its own mapping, faulted in anew
    assert out["kept"] < 100  # the first round's pages, reused
    assert out["after"] > pages // 2  # a freed top is trimmed again
