"""The ``tokenize`` backend: documents -> megatron-core indexed datasets (.bin/.idx)."""

from llmbuild.backends.tokenize.config import TokenizeConfig

from llmbuild.backend import Backend, Resources, Slot


class TokenizeBackend(Backend):
    name = "tokenize"
    version = "3"  # 2: documents' text is plain (a special token's spelling is text); a spec's Jinja chat template renders the chats; 3: a chat, a preference pair and a prompt read by a tokenizer whose pieces do not encode as their whole (Llama 2's "▁" before every text) are encoded whole, as transformers encodes them; no second eos after a template's own; a pretraining document starts with what its tokenizer puts before a text (Llama's <s>)
    Config = TokenizeConfig
    inputs = (
        Slot("documents", "the source node's cleaned shards"),
        Slot("tokenizer", "the tokenizer node's directory"),
    )
    outputs = (Slot("datasets", "IndexedDataset .bin/.idx per shard and split, with token counts"),)

    def resources(self, config: TokenizeConfig) -> Resources:
        return Resources(cpus=1)


backend = TokenizeBackend()
