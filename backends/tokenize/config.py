"""Config of a ``tokenize:<source>`` node."""

from llmbuild.spec.base import Name, SpecModel, marked
from llmbuild.spec.data import SourceRole


class TokenizeConfig(SpecModel):
    """How one source's documents become token ids."""

    source: Name = marked("label")
    """Name of the source."""
    role: SourceRole
    """The source's role, which decides the output form (packed text, chat with masks,
    preference pairs, prompts)."""
