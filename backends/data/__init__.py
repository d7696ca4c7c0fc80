"""The ``data`` backend: read a source, normalise, clean, deduplicate, split, shard."""

from llmbuild.backends.data.config import DataConfig

from llmbuild.backend import Backend, Resources, Slot


class DataBackend(Backend):
    name = "data"
    version = "2"  # 2: on_error = "skip" skips a text document that is not UTF-8 alone
    Config = DataConfig
    inputs = (Slot("files", "the source's files, entering by content digest"),)
    outputs = (
        Slot("shards", "cleaned documents as webdataset tar shards, train and validation"),
        Slot("report", "documents and bytes removed by each cleaning step"),
    )

    reports = ("report.json",)

    def resources(self, config: DataConfig) -> Resources:
        return Resources(cpus=1)


backend = DataBackend()
