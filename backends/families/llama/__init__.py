"""The Llama family (Llama 2, Llama 3 and 3.1+): ``LlamaForCausalLM``."""

from llmbuild.backends.families.base import Family
from llmbuild.backends.families.llama import config, gguf, weights

FAMILY = Family(
    name="llama",
    model_type="llama",
    hf_class="LlamaForCausalLM",
    style="llama",
    architecture=config.architecture,
    hf_config=config.hf_config,
    rules=weights.rules,
    gguf=gguf.GGUF,
    adapter_modules=weights.ADAPTER_MODULES,
    layer_prefix="model.layers.{}.",
    ignored=weights.IGNORED,
)
