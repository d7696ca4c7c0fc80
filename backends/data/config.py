"""Config of a ``source:<name>`` node (defined with the graph's front, which builds it)."""

from llmbuild.plan.front import DataConfig

__all__ = ["DataConfig"]
