"""The build graph: typed nodes with explicit, named references to the nodes they read."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from llmbuild.backend import Resources
from llmbuild.errors import Path, UserError, did_you_mean
from llmbuild.plan.digest import StatCache, digest_paths


@dataclass(frozen=True)
class External:
    """Files outside the store that a node reads; they enter its key by content digest."""

    slot: str
    patterns: tuple[str, ...]
    spec_path: Path
    """The spec key that names the files, for messages."""
    unordered: bool = False
    """Their order does not count (see ``spec.base.content``)."""
    suffixes: bool = False
    """Each file's suffix counts (see ``spec.base.content``)."""
    files: tuple[str, ...] = ()
    """Of a directory, the names of the files that count (see ``spec.base.content``)."""
    label: str = ""
    """How plan's reasons name the files: items by name (``stage.base.checkpoint``)."""

    def digest(self, cache: StatCache) -> dict[str, object]:
        """Their content digest (``digest_paths``, with this input's rules)."""
        return digest_paths(
            self.patterns, cache, unordered=self.unordered, suffixes=self.suffixes, only=self.files
        )


@dataclass(frozen=True)
class Node:
    """One unit of work: a backend applied to a config and named inputs."""

    name: str
    kind: str
    backend: str
    backend_version: str
    config: BaseModel
    inputs: dict[str, str] = field(default_factory=dict)
    """Slot -> upstream node name."""
    external: tuple[External, ...] = ()
    resources: Resources = field(default_factory=Resources)
    cutoff: bool = False
    """Deterministic: a downstream node may reuse its result when this node's output is
    unchanged (early cut-off)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Top-level config key -> the spec key it comes from, for explaining changes."""

    @property
    def upstream(self) -> list[str]:
        return list(dict.fromkeys(self.inputs.values()))

    @property
    def parallelism(self) -> Any:
        """The ``[parallelism]`` the node runs at, if its config has one (a resumable
        checkpoint is bound to it)."""
        return getattr(self.config, "parallelism", None)

    def spec_key(self, config_key: str) -> str:
        return self.labels.get(config_key, config_key)


class Graph:
    """Nodes in topological order (every node after the nodes it reads)."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: dict[str, Node] = {}
        for node in nodes:
            missing = [u for u in node.upstream if u not in self.nodes]
            if missing:
                raise ValueError(f"{node.name} reads {missing} before they are defined")
            if node.name in self.nodes:
                raise ValueError(f"duplicate node {node.name}")
            self.nodes[node.name] = node

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def downstream(self, name: str) -> list[str]:
        """Every node that reads ``name``, directly or not, in topological order."""
        reached = {name}
        for node in self:
            if any(u in reached for u in node.upstream):
                reached.add(node.name)
        return [n for n in self.nodes if n in reached and n != name]

    def closure(self, names: Iterable[str]) -> list[str]:
        """The named nodes and everything they read, in topological order."""
        want = set()
        stack = list(names)
        while stack:
            n = stack.pop()
            if n not in want:
                want.add(n)
                stack += self.nodes[n].upstream
        return [n for n in self.nodes if n in want]

    def resolve_name(self, name: str) -> str:
        """A node name as typed by a user (``pretrain`` finds ``stage:pretrain``)."""
        if name in self.nodes:
            return name
        matches = [n for n in self.nodes if n.split(":", 1)[-1] == name]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UserError(f"{name!r} is ambiguous: {', '.join(matches)}")
        raise UserError(f"no node named {name!r}{did_you_mean(name, self.nodes)}")

    def select(self, only: Iterable[str] = (), until: Iterable[str] = ()) -> Graph:
        """The subgraph of ``only`` (those nodes and what they read) and ``until`` (same)."""
        names = [self.resolve_name(n) for n in [*only, *until]]
        if not names:
            return self
        keep = set(self.closure(names))
        return Graph(n for n in self if n.name in keep)


def as_jsonable(config: Any) -> Any:
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json", by_alias=True)
    return config
