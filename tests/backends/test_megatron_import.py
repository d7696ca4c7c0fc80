"""Importing megatron-core on a CPU stays cheap: its torch.compile decorations wait for a
first call (none comes, its fused kernels are off on a CPU) instead of importing
TorchDynamo and Inductor in every process that trains, evaluates or exports."""

from __future__ import annotations

import json
import subprocess
import sys

from llmbuild.backends.megatron.cpu import _compiled_on_first_call

from tests.conftest import REPO


def test_megatron_imports_without_dynamo():
    code = (
        "import sys, json, torch\n"
        "real = torch.compile\n"
        "from llmbuild.backends.megatron.cpu import apply_cpu_patches\n"
        "apply_cpu_patches()\n"
        "import megatron.core.models.gpt, megatron.core.optimizer, megatron.core.distributed\n"
        "from llmbuild.backends.megatron import train, model, data_parallel, objectives\n"
        "from megatron.core import jit\n"
        "print(json.dumps([torch.compile is real, jit.jit_fuser is real,\n"
        "    sorted(m for m in sys.modules if m in ('torch._dynamo', 'torch._inductor'))]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    restored, megatrons_is_real, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert restored  # everyone else's torch.compile is torch's
    assert not megatrons_is_real
    assert loaded == []


def test_a_deferred_compile_compiles_once_on_the_first_call():
    calls = []

    def compile_(fn, **options):
        calls.append((fn.__name__, options))
        return lambda *a, **k: ("compiled", fn(*a, **k))

    deferred = _compiled_on_first_call(compile_)

    @deferred
    def add(a, b):
        return a + b

    @deferred(mode="max-autotune")
    def mul(a, b=2):
        return a * b

    assert calls == [] and add.__name__ == "add"
    assert add(1, 2) == ("compiled", 3)
    assert add(3, 4) == ("compiled", 7)
    assert mul(5) == ("compiled", 10)
    assert calls == [("add", {}), ("mul", {"mode": "max-autotune"})]
