"""Config of a ``source:<name>`` node: one source, read, cleaned and split."""

from llmbuild.spec.base import SpecModel
from llmbuild.spec.data import Clean, Source, Split


class DataConfig(SpecModel):
    """One data source with the cleaning and split applied to it."""

    source: Source
    """The source (its mixture weight belongs to the training stages, not here)."""
    clean: Clean
    """Normalisation, filtering and deduplication."""
    split: Split
    """The train/validation split."""
    shard_mb: int
    """Upper bound in MB of each output shard."""
