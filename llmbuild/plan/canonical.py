"""Canonical JSON: the one byte encoding of a key preimage.

Every value is tagged with its type, so ``1``, ``1.0``, ``"1"`` and ``true`` encode
differently; tables encode with sorted keys. Anything without a stable encoding (objects,
sets, bytes, NaN, non-string keys) raises instead of falling back to ``str(obj)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any


class CanonicalJSONError(TypeError):
    """A value has no stable canonical encoding."""


def _tagged(value: Any, where: str) -> Any:
    # bool before int: bool is a subclass of int.
    if value is None:
        return ["null"]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", str(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalJSONError(f"{where}: non-finite float {value!r} has no stable encoding")
        return ["float", repr(value)]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, (list, tuple)):
        return ["list", [_tagged(v, f"{where}[{i}]") for i, v in enumerate(value)]]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalJSONError(f"{where}: table key {k!r} is not a string")
            out[k] = _tagged(v, f"{where}.{k}")
        return ["dict", out]
    raise CanonicalJSONError(f"{where}: {type(value).__name__} has no stable encoding")


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 encoding of ``value``."""
    tagged = _tagged(value, "$")
    return json.dumps(
        tagged, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_hash(value: Any) -> str:
    """sha256 hex digest of the canonical encoding."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
