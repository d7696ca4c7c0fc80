"""Config of a ``stage:<name>`` node of kind ``prune``."""

from llmbuild.backends.prune.spec import Prune

from llmbuild.spec.base import SpecModel
from llmbuild.spec.model import Architecture


class PruneConfig(SpecModel):
    """A stage to prune and the shape it is pruned to."""

    stage: Prune
    """The `[[stage]]` table."""
    architecture: Architecture
    """The pruned shape (the pruned stage's, with the stage's changes)."""
    mixture: dict[str, float]
    """Blend weights of the calibration sources, by source name."""
