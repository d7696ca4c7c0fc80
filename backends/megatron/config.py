"""Config of a ``stage:<name>`` node: one training stage on megatron-core."""

from llmbuild.kinds import item_type
from llmbuild.spec.base import SpecModel, marked
from llmbuild.spec.model import Architecture, Parallelism


class TrainConfig(SpecModel):
    """A training stage with everything it needs from the rest of the spec."""

    stage: item_type("stage")  # type: ignore[valid-type]
    """The `[[stage]]` table."""
    architecture: Architecture
    """The model's shape."""
    seed: int
    """`model.seed`: weight initialisation and data order."""
    mixture: dict[str, float]
    """Blend weights of the pretrain-role sources this stage reads, by source name."""
    parallelism: Parallelism = marked("execution")
    """Device layout; never changes what is built."""
