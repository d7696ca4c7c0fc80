"""The backend contract: what runs inside a node.

A backend declares its ``name``, an explicit ``version`` (bumped whenever its output for
the same inputs would change; code text is never hashed), its ``Config`` model, the input
and output slots it reads and writes, the ``resources`` a node needs, and ``run``.
Backends must be importable without torch: heavy imports belong inside ``run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel


@dataclass(frozen=True)
class Resources:
    """What one node asks of the machine; ``ranks`` > 1 runs it as a group of ranks."""

    cpus: float = 1.0
    gpus: float = 0.0
    ranks: int = 1
    whole_machine: bool = False
    """Every core of the machine the node runs on (``cpus`` is this machine's count): an
    executor whose machines are smaller gives it a whole one of theirs instead."""

    @classmethod
    def machine(cls) -> Resources:
        """A node that computes with one model in one process (an eval, an export): this
        machine's cores, as a lone training rank takes them."""
        import os

        return cls(cpus=os.cpu_count() or 1, whole_machine=True)

    def __str__(self) -> str:
        per = f"{self.cpus:g} cpu" + (f" + {self.gpus:g} gpu" if self.gpus else "")
        return f"{self.ranks} x ({per})" if self.ranks > 1 else per


@dataclass(frozen=True)
class Slot:
    """A named input or output of a backend, with what it holds."""

    name: str
    description: str


class Backend:
    """Base class of every backend; subclasses set the class attributes."""

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    inputs: ClassVar[tuple[Slot, ...]] = ()
    outputs: ClassVar[tuple[Slot, ...]] = ()
    reports: ClassVar[tuple[str, ...]] = ()
    """Output files that describe the work (counts, logs) rather than being its result:
    they are stored and manifested, but do not count in the output digest, so a rebuild
    that produces the same result with a different report still cuts off downstream.
    An entry ending in ``/`` names a folder of reports."""

    def resources(self, config: Any) -> Resources:
        """Resources a node with this config needs."""
        return Resources()

    def run(self, ctx: Any) -> None:
        """Produce the outputs of one node into ``ctx.out_dir``.

        By default, ``run(ctx)`` of the ``run`` module beside the backend's package, so
        that heavy imports happen only when a node runs."""
        import importlib

        package = type(self).__module__
        try:
            module = importlib.import_module(f"{package}.run")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.run":
                raise
            raise NotImplementedError(f"the {self.name!r} backend cannot run nodes yet") from None
        module.run(ctx)

    def __repr__(self) -> str:
        return f"<backend {self.name} v{self.version}>"
