"""What to keep when pruning, measured on calibration batches (as Minitron does): a
width's importance is the mean magnitude of its activations, a layer's is what removing
it costs.

- MLP channels: mean ``|x|`` of each channel entering ``linear_fc2``;
- query groups: mean L2 norm of each query head's output entering ``linear_proj``, summed
  over the heads of its group;
- hidden channels: mean ``|x|`` of each channel leaving every norm (each layer's two and
  the final one);
- layers: the calibration loss with the layer skipped (its input passed through) minus
  the loss of the whole model. The layers whose removal costs least go.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from llmbuild.backends.prune.slicing import Keep, Shape


@torch.no_grad()
def calibration_loss(model: Any, batches: Iterable[torch.Tensor]) -> float:
    """The model's mean next-token loss over the calibration batches."""
    total, count = 0.0, 0
    for tokens in batches:
        pos = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
        logits = model(tokens[:, :-1], pos[:, :-1], None)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        total, count = total + float(loss), count + 1
    return total / max(count, 1)


def _skip(module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def widths(model: Any, shape: Shape, batches: list[torch.Tensor]) -> dict[str, Any]:
    """Per layer, the importance of each MLP channel and query group; and of each hidden
    channel over the whole model."""
    layers = model.decoder.layers
    ffn = [torch.zeros(shape.ffn_hidden) for _ in layers]
    heads = [torch.zeros(shape.heads) for _ in layers]
    hidden = torch.zeros(shape.hidden)
    hooks = []

    def on_fc2(i: int) -> Any:
        def hook(_m: Any, args: tuple) -> None:
            ffn[i] += args[0].detach().abs().float().flatten(0, -2).sum(0)

        return hook

    def on_proj(i: int) -> Any:
        def hook(_m: Any, args: tuple) -> None:
            x = args[0].detach().float()
            per_head = x.view(*x.shape[:-1], shape.heads, shape.head_dim).norm(dim=-1)
            heads[i] += per_head.flatten(0, -2).sum(0)

        return hook

    def on_norm(_m: Any, _args: tuple, out: Any) -> None:
        nonlocal hidden
        hidden += out.detach().abs().float().flatten(0, -2).sum(0)

    for i, layer in enumerate(layers):
        hooks.append(layer.mlp.linear_fc2.register_forward_pre_hook(on_fc2(i)))
        hooks.append(layer.self_attention.linear_proj.register_forward_pre_hook(on_proj(i)))
        hooks.append(layer.input_layernorm.register_forward_hook(on_norm))
        hooks.append(layer.pre_mlp_layernorm.register_forward_hook(on_norm))
    hooks.append(model.decoder.final_layernorm.register_forward_hook(on_norm))
    try:
        with torch.no_grad():
            calibration_loss(model, batches)
    finally:
        for h in hooks:
            h.remove()
    per_group = shape.heads // shape.kv_heads
    groups = [h.view(shape.kv_heads, per_group).sum(-1) for h in heads]
    return {"ffn": ffn, "groups": groups, "hidden": hidden}


def layer_costs(model: Any, batches: list[torch.Tensor]) -> tuple[float, list[float]]:
    """The calibration loss of the whole model, and how much skipping each layer adds."""
    with torch.no_grad():
        base = calibration_loss(model, batches)
        costs = []
        for layer in model.decoder.layers:
            hook = layer.register_forward_hook(_skip, with_kwargs=True)
            try:
                costs.append(calibration_loss(model, batches) - base)
            finally:
                hook.remove()
    return base, costs


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, in order (ties to the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def choose(
    model: Any, before: Shape, after: Shape, batches: list[torch.Tensor]
) -> tuple[Keep, dict[str, Any]]:
    """What to keep to reach ``after`` from ``before``, and the measurements behind it."""
    base, costs = layer_costs(model, batches)
    layers = _top(torch.tensor(costs), after.layers)
    measured = widths(model, before, batches)
    keep = Keep(
        layers=layers,
        groups={i: _top(measured["groups"][i], after.kv_heads) for i in layers},
        channels={i: _top(measured["ffn"][i], after.ffn_hidden) for i in layers},
        hidden=_top(measured["hidden"], after.hidden),
    )
    report = {
        "calibration_loss": base,
        "layer_costs": costs,
        "dropped_layers": [i for i in range(before.layers) if i not in layers],
    }
    return keep, report
