"""megatron's tensor-parallel linears through torch's own linear where nothing is parallel.

At tensor-parallel size 1, without sequence parallelism, megatron's column- and
row-parallel linears still run their matrix multiply in a Python autograd Function
(``LinearWithGradAccumulationAndAsyncCommunication``) whose backward computes the same two
products autograd would, and the column-parallel one first passes its input through a
second Function (an all-reduce of the input's gradient over a group of one). On a CPU
those Python calls, four per linear and step, are a measurable share of a small model's
step. ``plain_linears`` gives such layers ``F.linear``: the same products in the same
order (gradients and trained weights bit for bit as before, ``tests/backends/
test_lone_rank.py``), with autograd's C++ backward.

Under autocast (bf16 on a CPU) megatron's Function runs its backward under autocast as
well, which autograd's does not; the layers then keep megatron's path.

A row-parallel linear then all-reduces its output over the tensor-parallel group through a
third Function, forward and backward an identity for a group of one; where the layer
leaves its bias to the caller (``skip_bias_add``, as the attention's output projection and
the MLP's second linear do), ``plain_linears`` has it skip that too.
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
            elif module.skip_bias_add and not module.explicit_expert_comm:
                # Nor its output: megatron's switch for layers whose callers communicate
                # (MoE experts) passes it on as it is; with a group of one, that is all the
                # all-reduce would do.
                module.explicit_expert_comm = module.skips_lone_reduce = True
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
            if getattr(module, "skips_lone_reduce", False):
                module.explicit_expert_comm = module.skips_lone_reduce = False
            undone += 1
    return undone
