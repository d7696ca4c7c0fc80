"""The Mistral family: ``MistralForCausalLM`` (its tensors are Llama's)."""

from llmbuild.backends.families.base import Family
from llmbuild.backends.families.llama import weights
from llmbuild.backends.families.mistral import config, gguf

FAMILY = Family(
    name="mistral",
    model_type="mistral",
    hf_class="MistralForCausalLM",
    style="llama",
    architecture=config.architecture,
    hf_config=config.hf_config,
    rules=weights.rules,
    gguf=gguf.GGUF,
    adapter_modules=weights.ADAPTER_MODULES,
    layer_prefix="model.layers.{}.",
    ignored=weights.IGNORED,
)
