"""Config of the ``tokenizer`` node (defined with the graph's front, which builds it)."""

from llmbuild.plan.front import TokenizerConfig

__all__ = ["TokenizerConfig"]
