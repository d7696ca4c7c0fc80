"""Config of a ``tokenize:<source>`` node (defined with the graph's front, which builds it)."""

from llmbuild.plan.front import TokenizeConfig

__all__ = ["TokenizeConfig"]
