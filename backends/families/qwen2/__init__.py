"""The Qwen2 family (Qwen2, Qwen2.5): ``Qwen2ForCausalLM``."""

from llmbuild.backends.families.base import Family
from llmbuild.backends.families.qwen2 import config, gguf, weights

FAMILY = Family(
    name="qwen2",
    model_type="qwen2",
    hf_class="Qwen2ForCausalLM",
    style="llama",
    architecture=config.architecture,
    hf_config=config.hf_config,
    rules=weights.rules,
    gguf=gguf.GGUF,
    adapter_modules=weights.ADAPTER_MODULES,
    layer_prefix="model.layers.{}.",
    ignored=weights.IGNORED,
)
