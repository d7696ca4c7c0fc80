"""The Qwen3 family: ``Qwen3ForCausalLM``."""

from llmbuild.backends.families.base import Family
from llmbuild.backends.families.qwen3 import config, gguf, weights

FAMILY = Family(
    name="qwen3",
    model_type="qwen3",
    hf_class="Qwen3ForCausalLM",
    style="llama",
    architecture=config.architecture,
    hf_config=config.hf_config,
    rules=weights.rules,
    gguf=gguf.GGUF,
    adapter_modules=weights.ADAPTER_MODULES,
    layer_prefix="model.layers.{}.",
    ignored=weights.IGNORED,
)
