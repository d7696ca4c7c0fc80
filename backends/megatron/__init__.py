"""The ``megatron`` backend: pretrain, sft, lora, dpo, grpo and reward stages."""

from llmbuild.backends.megatron.config import TrainConfig

from llmbuild.backend import Backend, Resources, Slot


class MegatronBackend(Backend):
    name = "megatron"
    version = "5"  # 5: class-weighted and GRPO losses weigh alike at any micro batch
    # (4: validation with dropout off; 3: padded vocabulary rows hidden)
    Config = TrainConfig
    reports = ("metrics.jsonl", "tensorboard/", "loss.png")
    inputs = (
        Slot("from", "the stage whose weights this one starts from (its base, when it holds "
             "only adapters, is found through it)"),
        Slot("tokenizer", "the tokenizer node's directory"),
        Slot("data:<source>", "tokenized datasets of each source the stage reads"),
        Slot("reference", "the frozen reference stage (dpo)"),
        Slot("reward:<i>", "reward-model stages (grpo)"),
    )  # fmt: skip
    outputs = (
        Slot("model", "weights as one layout-independent safetensors file + config"),
        Slot("metrics", "loss curve and metrics as JSONL, TensorBoard events, PNG"),
    )

    def resources(self, config: TrainConfig) -> Resources:
        par = config.parallelism
        gpus = 1.0 if par.device == "gpu" else 0.0
        return Resources(cpus=par.rank_cpus(), gpus=gpus, ranks=par.world_size)


backend = MegatronBackend()
