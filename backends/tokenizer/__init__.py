"""The ``tokenizer`` backend: char/byte vocabularies, BPE/unigram training, pretrained."""

from llmbuild.backends.tokenizer.config import TokenizerConfig

from llmbuild.backend import Backend, Slot


class TokenizerBackend(Backend):
    name = "tokenizer"
    version = "1"
    Config = TokenizerConfig
    inputs = (
        Slot("text:<source>", "cleaned training split of each training source"),
        Slot("files", "a pretrained tokenizer directory, by content digest"),
    )
    outputs = (
        Slot("tokenizer", "a directory transformers.AutoTokenizer loads, with chat template"),
    )


backend = TokenizerBackend()
