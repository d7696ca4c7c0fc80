"""The ``checkpoint`` backend: Hugging Face checkpoints imported as stages."""

from llmbuild.backends.checkpoint.config import ImportConfig

from llmbuild.backend import Backend, Resources, Slot


class CheckpointBackend(Backend):
    name = "checkpoint"
    version = "2"  # 2: the check compares log-probabilities too
    Config = ImportConfig
    inputs = (
        Slot("files", "the checkpoint's files (config, weights, tokenizer), by content digest"),
    )
    outputs = (
        Slot("model", "the weights in our canonical form, as a stage artifact, with config.json"),
        Slot("check", "the largest difference of our logits from transformers', in the record"),
    )

    def resources(self, config: ImportConfig) -> Resources:
        return Resources(cpus=1)


backend = CheckpointBackend()
