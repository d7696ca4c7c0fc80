"""Config of an ``eval:<suite>@<stage>`` node."""

from llmbuild.spec.base import Name, SpecModel, marked
from llmbuild.spec.outputs import EvalSuite


class EvalConfig(SpecModel):
    """One eval suite applied to one stage."""

    suite: EvalSuite
    """The `[[eval]]` table."""
    stage: Name = marked("label")
    """Name of the evaluated stage (its weights enter as the `model` input)."""
