"""megatron-core on a CPU: the compatibility patches, applied before megatron is imported
and only in processes without CUDA.

megatron-core is written for CUDA, but the pieces llmbuild uses run on CPU over gloo once
the few CUDA-only calls below are redirected. Each patch says why it is needed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_applied = False


@contextmanager
def node_threads(ctx: Any) -> Iterator[int]:
    """torch's intra-op threads for the work of one eval or export node: the CPUs the node
    holds, whichever executor runs it (a Ray worker would otherwise take one thread and an
    inline build all the cores, and a CPU's sums depend on how they are split over
    threads). Recorded in the node's timings; restored afterwards."""
    import torch

    threads = max(1, int(ctx.resources.cpus))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    ctx.timings["threads"] = torch.get_num_threads()  # in effect, as the work runs
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def indexed_dataset() -> Any:
    """megatron's ``IndexedDataset`` class, imported after the patches (a process that
    reads token data before it builds a model imports megatron here first)."""
    apply_cpu_patches()
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset


def needs_cpu_patches() -> bool:
    import torch

    return not torch.cuda.is_available()


def quiet_megatron() -> None:
    """megatron-core warns about optional CUDA packages (Apex, Transformer Engine) and its
    own deprecations on import and per layer; none of it is actionable for a user."""
    import warnings

    for category in (UserWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"megatron(\.|$)")
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*not installed.*")
    warnings.filterwarnings("ignore", message=".*torch.jit.script_method.*")
    # torch deprecates the collectives megatron's DDP and distributed optimizer call.
    warnings.filterwarnings(
        "ignore", message=".*(reduce_scatter_tensor|all_gather_into_tensor).*is deprecated"
    )


def _on_cpu(decorator: Any, fn: Any = None, **kwargs: Any) -> Any:
    kwargs["device_type"] = "cpu"
    return decorator(fn, **kwargs) if fn is not None else decorator(**kwargs)


class _CpuTorch:
    """``torch`` for modules that create tensors on "cuda": factories land on the CPU."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._torch, name)
        if name in ("zeros", "ones", "empty", "full", "tensor", "arange"):

            def on_cpu(*args: Any, **kwargs: Any) -> Any:
                if str(kwargs.get("device", "")).startswith("cuda"):
                    kwargs["device"] = "cpu"
                return value(*args, **kwargs)

            return on_cpu
        return value


def apply_cpu_patches() -> None:
    """Idempotent; a no-op when CUDA is available. Call it before megatron is imported:
    every place in llmbuild that imports megatron does."""
    global _applied
    quiet_megatron()
    if _applied or not needs_cpu_patches():
        return
    import functools

    if "megatron.core.tensor_parallel.layers" in sys.modules:
        raise RuntimeError(
            "megatron-core was imported before apply_cpu_patches(): its layers already bound "
            "CUDA autocast, so bf16 training on the CPU would fail; call apply_cpu_patches() "
            "before importing megatron"
        )

    import torch

    # megatron's tensor-parallel linear layers bind torch.amp.custom_fwd/custom_bwd with
    # device_type="cuda" when they are imported; under CPU autocast (bf16) their backward
    # would then see mixed dtypes. Point them at the CPU before megatron is imported.
    torch.amp.custom_fwd = functools.partial(_on_cpu, torch.amp.custom_fwd)  # type: ignore[assignment]
    torch.amp.custom_bwd = functools.partial(_on_cpu, torch.amp.custom_bwd)  # type: ignore[assignment]
    cpu = torch.device("cpu")
    # RoPE moves inv_freq to torch.cuda.current_device(); pipeline receive buffers and
    # checkpoint saving ask it for their device too: answer with the CPU.
    torch.cuda.current_device = lambda: cpu  # type: ignore[assignment]
    # Timers and schedules synchronise the CUDA stream; there is none.
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]

    # megatron decorates its fused kernels with torch.compile as it is imported, and that
    # imports TorchDynamo and Inductor: 1.5 s of every process that imports megatron. On
    # a CPU those kernels are switched off (model.py), so megatron gets a torch.compile
    # that compiles a function when it is first called, which none is.
    compile_ = torch.compile
    torch.compile = _compiled_on_first_call(compile_)  # type: ignore[assignment]
    try:
        # Tensor-parallel RNG tracking saves and restores the CUDA RNG state (seeding and
        # activation recompute); on CPU the default generator is the only state there is.
        from megatron.core.tensor_parallel import random as tp_random
    finally:
        torch.compile = compile_  # type: ignore[assignment]

    # The first and last pipeline stages sync their copies of a shared embedding after
    # moving it with .cuda(); in a process without CUDA every tensor stays where it is.
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    # Seeding (model_parallel_cuda_manual_seed) reads and sets the CUDA RNG through
    # torch.cuda directly: on CPU those calls see (and leave) the default generator.
    tp_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    tp_random._set_cuda_rng_state = lambda *a, **k: None
    # Pipeline schedules count tokens in a tensor made with device="cuda".
    from megatron.core.pipeline_parallel import schedules

    schedules.torch = _CpuTorch(torch)
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()  # type: ignore[assignment]
    torch.cuda.manual_seed = lambda *a, **k: None  # type: ignore[assignment]
    _patch_optimizer(torch)
    _applied = True


def _compiled_on_first_call(compile_: Any) -> Any:
    """``torch.compile`` (as a decorator, with or without options) that compiles each
    function the first time it is called rather than when it is decorated."""
    import functools

    def deferred(fn: Any = None, **options: Any) -> Any:
        if fn is None:
            return lambda f: deferred(f, **options)
        compiled = None

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal compiled
            if compiled is None:
                compiled = compile_(fn, **options)
            return compiled(*args, **kwargs)

        return call

    return deferred


def _cuda_type_name(type_of: Any) -> Any:
    """``Tensor.type`` that gives the CUDA name of a CPU tensor's type (``torch.cuda.
    FloatTensor``) to megatron's optimizer modules only; everyone else sees the truth."""

    def type_name(self: Any, dtype: Any = None, *args: Any, **kwargs: Any) -> Any:
        value = type_of(self, dtype, *args, **kwargs)
        if dtype is None and not self.is_cuda:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core.optimizer"):
                return value.replace("torch.", "torch.cuda.", 1)
        return value

    return type_name


def _patch_optimizer(torch: Any) -> None:
    """megatron's DistributedDataParallel and optimizers (FP32, distributed, chained)."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads, optimizer

    # The optimizers (megatron.core.optimizer.optimizer, the distributed one's base
    # classes included) keep scale and overflow scalars made with device="cuda"; the
    # grad norm, clipping and the local stand-in for Apex's multi-tensor l2 norm
    # (megatron.core.utils) make theirs the same way. DDP's grad buffers and the
    # distributed optimizer's state ask torch.cuda.current_device(), patched above.
    for module in (optimizer, clip_grads, utils):
        module.torch = _CpuTorch(torch)  # type: ignore[attr-defined]
    # The distributed optimizer sorts parameters by ``param.type()`` against
    # "torch.cuda.FloatTensor" (and raises on anything else), and grad clipping asserts
    # the same of every gradient.
    torch.Tensor.type = _cuda_type_name(torch.Tensor.type)  # type: ignore[method-assign]
    # Without Apex, gradient clipping falls back to megatron's local multi-tensor ops: a
    # Python loop over the gradients that norms each, then makes a scaled copy of each
    # and copies it back. torch's foreach ops do the same arithmetic in one call each.
    clip_grads.l2_norm_impl = _multi_tensor_l2_norm
    clip_grads.multi_tensor_scale_impl = _multi_tensor_scale


def _multi_tensor_l2_norm(
    chunk_size: int, noop_flag: Any, tensor_lists: list[list[Any]], per_tensor: bool, *args: Any
) -> tuple[Any, None]:
    """megatron's ``local_multi_tensor_l2_norm``, bit for bit: the norm of the tensors'
    norms, as a one-element tensor."""
    import torch

    tensors = [t for tensor_list in tensor_lists for t in tensor_list]
    if not tensors:
        return torch.zeros(1), None
    total = torch.norm(torch.stack(torch._foreach_norm(tensors)))
    return torch.tensor([float(total)], dtype=torch.float), None


def _multi_tensor_scale(
    chunk_size: int, noop_flag: Any, tensor_lists: list[list[Any]], scale: float
) -> None:
    """megatron's ``local_multi_tensor_scale`` (``dst = src * scale``), in place with one
    foreach call where source and destination are the same tensors (clipping)."""
    import torch

    src, dst = tensor_lists
    if len(src) == len(dst) and all(s is d for s, d in zip(src, dst)):
        torch._foreach_mul_(dst, scale)
        return
    for s, d in zip(src, dst):
        d.copy_(s * scale)
