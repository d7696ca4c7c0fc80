"""The ``prune`` backend: a stage pruned to a smaller shape, written as a stage artifact
that every stage, eval and export reads like a trained one."""

from llmbuild.backends.prune.config import PruneConfig

from llmbuild.backend import Backend, Resources, Slot


class PruneBackend(Backend):
    name = "prune"
    version = "2"  # 2: importance losses over the vocabulary only
    Config = PruneConfig
    inputs = (
        Slot("from", "the stage to prune"),
        Slot("data:<source>", "tokenized calibration text"),
        Slot("tokenizer", "the tokenizer (its end-of-document id separates documents)"),
    )
    outputs = (
        Slot("model", "the pruned weights, as a stage artifact, with config.json"),
        Slot("report", "what was measured and dropped (importance.json)"),
    )
    reports = ("importance.json",)

    def resources(self, config: PruneConfig) -> Resources:
        return Resources(cpus=1)


backend = PruneBackend()
