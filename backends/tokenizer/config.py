"""Config of the ``tokenizer`` node."""

from llmbuild.spec.base import SpecModel
from llmbuild.spec.model import Tokenizer


class TokenizerConfig(SpecModel):
    """The tokenizer to train or load."""

    tokenizer: Tokenizer
    """The `[tokenizer]` table."""
