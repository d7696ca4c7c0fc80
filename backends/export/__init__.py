"""The ``export`` backend: hf, peft, onnx (+int8) and gguf, each proven by reloading."""

from llmbuild.backends.export.config import ExportConfig

from llmbuild.backend import Backend, Resources, Slot


class ExportBackend(Backend):
    name = "export"
    version = "8"  # 4: hf tokenizers carry model_max_length; 5: the model's positions;
    # 6: a classifier's tokenizer puts texts in the stage's form, with a pad of its own;
    # 7: a chat source's held-out perplexity is its answers', conversation by conversation;
    # 8: a GGUF's add_bos_token (add_eos_token) follows its tokenizer (a Llama's <s>)
    Config = ExportConfig
    inputs = (
        Slot("model", "the exported stage (a LoRA stage's base is found through it)"),
        Slot("tokenizer", "the tokenizer node's directory"),
    )
    outputs = (
        Slot(
            "export",
            "files in the target format and the logit comparison (peft: the adapter and "
            "the base's hf export in base/)",
        ),
    )

    def resources(self, config: ExportConfig) -> Resources:
        return Resources.machine()


backend = ExportBackend()
