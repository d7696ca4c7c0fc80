"""Config of an ``export:<format>@<stage>`` node."""

from llmbuild.kinds import item_type
from llmbuild.spec.base import SpecModel, added


class ExportConfig(SpecModel):
    """One export target."""

    export: item_type("export")  # type: ignore[valid-type]
    """The `[[export]]` table."""
    model_name: str = ""
    """The model's name (`[model] name`), which GGUF files carry as `general.name`."""
    finetune: str = added("")
    """The exported stage's name, which GGUF files carry as `general.finetune`."""
