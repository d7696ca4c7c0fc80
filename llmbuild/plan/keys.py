"""Node keys: sha256 over the canonical JSON of what decides a node's output.

``key = sha256(canonical_json({kind, backend, backend_version, config, inputs}))`` where
``config`` is the node's config minus the fields its schema marks (execution-only,
labels, references, content paths), and ``inputs`` maps each slot to the upstream key, or
for external files to their content digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from llmbuild.plan.canonical import canonical_hash
from llmbuild.plan.graph import Graph, Node
from llmbuild.spec.base import key_mark


def key_config(value: Any) -> Any:
    """The part of a config that decides the output: marked fields removed, recursively."""
    if isinstance(value, BaseModel):
        out = {}
        for name, f in type(value).model_fields.items():
            mark = key_mark(type(value), name)
            role = mark.role if mark is not None else None
            if mark is not None and mark.unless and getattr(value, mark.unless) is not None:
                role = "added"  # deciding the output here: in the key unless at its default
            field_value = getattr(value, name)
            if role == "added" and field_value == f.default:
                continue
            if role is not None and role != "added":
                continue
            out[f.alias or name] = key_config(field_value)
        return out
    if isinstance(value, (list, tuple)):
        return [key_config(v) for v in value]
    if isinstance(value, dict):
        return {str(k): key_config(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class NodeKey:
    """A node's key and the preimage it hashes (kept in records to explain rebuilds)."""

    key: str
    preimage: dict[str, Any]

    @property
    def short(self) -> str:
        return self.key[:12]


def preimage(node: Node, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": node.kind,
        "backend": node.backend,
        "backend_version": node.backend_version,
        "config": key_config(node.config),
        "inputs": dict(inputs),
    }


def node_keys(graph: Graph, externals: Mapping[str, Mapping[str, Any]]) -> dict[str, NodeKey]:
    """Keys of every node, in topological order; ``externals`` gives each node's external
    slot digests (see ``digest.py``)."""
    keys: dict[str, NodeKey] = {}
    for node in graph:
        inputs: dict[str, Any] = {slot: keys[up].key for slot, up in node.inputs.items()}
        inputs.update(externals.get(node.name, {}))
        pre = preimage(node, inputs)
        keys[node.name] = NodeKey(canonical_hash(pre), pre)
    return keys


def cutoff_key(
    graph: Graph, node: Node, keys: Mapping[str, NodeKey], artifacts: Mapping[str, tuple[str, str]]
) -> str | None:
    """Early cut-off: the key of ``node`` with each input replaced by what it resolved to.

    ``artifacts`` maps upstream names to (output digest, key of the artifact used). A
    deterministic upstream counts by its output digest, so an upstream rebuilt to the same
    bytes changes nothing; any other upstream counts by the artifact it resolved to, which
    is a different key only when it was itself reused. None when an upstream is not built
    yet or nothing is replaced (the cut-off key would be the key)."""
    pre = dict(keys[node.name].preimage)
    inputs = dict(pre["inputs"])
    replaced = False
    for slot, up in node.inputs.items():
        if up not in artifacts:
            return None
        digest, artifact_key = artifacts[up]
        if graph[up].cutoff:
            inputs[slot] = {"output": digest}
            replaced = True
        elif artifact_key != keys[up].key:
            replaced = True
            inputs[slot] = artifact_key
    if not replaced:
        return None
    pre["inputs"] = inputs
    return canonical_hash(pre)
