"""megatron's tensor-parallel linears through torch's own linear where nothing is parallel.

At tensor-parallel size 1, without sequence parallelism, megatron's column- and
row-parallel linears still run their matrix multiply in a Python autograd Function
(``LinearWithGradAccumulationAndAsyncCommunication``) whose backward computes the same two
products autograd would, and the column-parallel one first passes its input through a
second Function (an all-reduce of the input's gradient over a group of one). On a CPU
those Python calls, four per linear and step, are a measurable share of a small model's
step. ``plain_linears`` gives such layers ``F.linear``: the same products in the same
order (gradients and trained weights bit for bit as before, ``tests/backends/
test_linears.py``), with autograd's C++ backward.

Under autocast (bf16 on a CPU) megatron's Function runs its backward under autocast as
well, which autograd's does not; the layers then keep megatron's path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _linear(megatron_impl: Any) -> Any:
    def forward_impl(input: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if torch.is_autocast_enabled("cpu"):
            return megatron_impl(input, weight, *args, **kwargs)
        out = F.linear(input, weight)  # megatron's ``matmul(input, weight.t())``
        bias = kwargs.get("bias", args[0] if args else None)
        return out if bias is None else out + bias  # added after, as megatron does

    return forward_impl


def plain_linears(model: torch.nn.Module, config: Any) -> int:
    """Give every column- and row-parallel linear of ``model`` torch's linear when the
    layout makes them plain linears: one tensor-parallel rank, no sequence parallelism, on
    a CPU. Returns how many layers were changed."""
    if (
        config.tensor_model_parallel_size != 1
        or config.sequence_parallel
        or torch.cuda.is_available()
    ):
        return 0
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    changed = 0
    for module in model.modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            module._forward_impl = _linear(module._forward_impl)
            if isinstance(module, ColumnParallelLinear):
                # Its input's gradient needs no all-reduce over a group of one.
                module.disable_grad_reduce = True
            changed += 1
    return changed


def megatron_linears(model: torch.nn.Module) -> int:
    """Undo ``plain_linears``: megatron's own linear Functions, as at every other layout
    (for comparing the two paths). Returns how many layers were changed."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    undone = 0
    for module in model.modules():
        layer = isinstance(module, (ColumnParallelLinear, RowParallelLinear))
        if layer and "_forward_impl" in vars(module):
            del module._forward_impl
            module.disable_grad_reduce = False
            undone += 1
    return undone
