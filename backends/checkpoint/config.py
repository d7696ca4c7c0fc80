"""Config of a ``stage:<name>`` node of kind ``import``."""

from llmbuild.backends.checkpoint.spec import Import

from llmbuild.spec.base import PositiveInt, SpecModel


class ImportConfig(SpecModel):
    """A checkpoint to import, with the spec's settings of the model it becomes."""

    stage: Import
    """The `[[stage]]` table."""
    seq_len: PositiveInt
    """`architecture.seq_len`: the context the imported stage is evaluated and used at."""
    vocab_multiple: PositiveInt
    """`architecture.vocab_multiple`: its embedding rows are padded to a multiple of it."""
