"""Config of an ``eval:<suite>@<stage>`` node."""

from llmbuild.kinds import item_type
from llmbuild.spec.base import Name, SpecModel, marked


class EvalConfig(SpecModel):
    """One eval suite applied to one stage."""

    suite: item_type("eval")  # type: ignore[valid-type]
    """The `[[eval]]` table."""
    stage: Name = marked("label")
    """Name of the evaluated stage (its weights enter as the `model` input)."""
