"""The GPT-2 family: ``GPT2LMHeadModel``."""

from llmbuild.backends.families.base import Family
from llmbuild.backends.families.gpt2 import config, gguf, weights

FAMILY = Family(
    name="gpt2",
    model_type="gpt2",
    hf_class="GPT2LMHeadModel",
    style="gpt2",
    architecture=config.architecture,
    hf_config=config.hf_config,
    rules=weights.rules,
    gguf=gguf.GGUF,
    adapter_modules=weights.ADAPTER_MODULES,
    layer_prefix="transformer.h.{}.",
    ignored=weights.IGNORED,
)
