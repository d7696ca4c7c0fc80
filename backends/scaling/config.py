"""Config of an ``eval:<sweep>`` node of kind ``scaling``."""

from llmbuild.backends.scaling.spec import Scaling

from llmbuild.spec.base import SpecModel


class ScalingConfig(SpecModel):
    """The scaling-law fit over a sweep's points."""

    suite: Scaling
    """The `[[eval]]` table the sweep wrote."""
