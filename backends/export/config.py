"""Config of an ``export:<format>@<stage>`` node."""

from llmbuild.spec.base import SpecModel
from llmbuild.spec.outputs import Export


class ExportConfig(SpecModel):
    """One export target."""

    export: Export
    """The `[[export]]` table."""
