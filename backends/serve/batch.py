"""Sequences decoding together through one transformers model: their KV cache (a
``DynamicCache`` of full-attention layers), attention mask and next positions, left-padded
so that every row's last token is in the last column. Rows join between steps (prefilled
as a left-padded batch of their own, then merged, the shorter side padded on the left)
and leave (selected out); columns no row uses any more are trimmed. Each row's tokens
are contiguous, so rotary keys (cached at their own positions) and sliding windows stay
right whatever the padding."""

from __future__ import annotations

import inspect
from typing import Any


def _left_pad(t: Any, width: int, dim: int) -> Any:
    import torch.nn.functional as F

    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad)


class Batch:
    """The rows decoding now; row ``i`` is the ``i``-th sequence the engine holds."""

    def __init__(self, model: Any, pad_id: int = 0) -> None:
        self.model, self.pad_id = model, pad_id
        params = inspect.signature(model.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache`; older releases know only the first.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = "logits_to_keep" in params
        self.cache: Any = None
        self.mask: Any = None
        """``[rows, columns]``, 1 where a row has a token."""
        self.positions: Any = None
        """``[rows]``: the position of each row's next token."""

    @property
    def size(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        kwargs = {self._cache_arg: cache, "use_cache": True}
        if self._keep_arg:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1, :].float()

    def prefill(self, prompts: list[list[int]]) -> Any:
        """Runs the prompts of joining rows as one left-padded batch and appends them;
        the logits of their first new tokens, ``[len(prompts), vocab]``."""
        import torch
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()  # no config: full layers, whose tensors can be padded and joined
        logits = self._forward(ids, mask, positions, cache)
        self._append(cache, mask, mask.sum(1))
        return logits

    def _append(self, cache: Any, mask: Any, positions: Any) -> None:
        import torch

        if self.size == 0:
            self.cache, self.mask, self.positions = cache, mask, positions
            return
        width = max(self.width, int(mask.shape[1]))
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat(
                [_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)]
            )
            mine.values = torch.cat(
                [_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)]
            )
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.positions = torch.cat([self.positions, positions])

    def step(self, tokens: list[int]) -> Any:
        """Feeds each row its last token; the logits of the next, ``[rows, vocab]``."""
        import torch

        ids = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)
        mask = torch.cat([self.mask, torch.ones((self.size, 1), dtype=torch.long)], dim=1)
        logits = self._forward(ids, mask, self.positions.unsqueeze(1), self.cache)
        self.mask, self.positions = mask, self.positions + 1
        return logits

    def keep(self, rows: list[int]) -> None:
        """Keeps only ``rows`` (in that order), then drops the columns left unused."""
        import torch

        if len(rows) == self.size:
            return
        if not rows:
            self.cache = self.mask = self.positions = None
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.mask, self.positions = self.mask[index], self.positions[index]
        used = self.mask.any(dim=0)
        first = int(used.int().argmax())
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask = self.mask[:, first:]

    def clear(self) -> None:
        self.cache = self.mask = self.positions = None
