"""The ``eval`` backend: perplexity, lm-eval tasks and samples."""

from llmbuild.backends.eval.config import EvalConfig

from llmbuild.backend import Backend, Resources, Slot


class EvalBackend(Backend):
    name = "eval"
    version = "9"  # 3: the padded vocabulary rows take no share of a perplexity;
    # 4: a chat source's perplexity is its answers', a classification the majority rate;
    # 5: a classification's baseline measures its listed files too;
    # 6: a classification's predictions carry each text's index and tokens as read, and
    # a multi-label one the rate of always answering the most common set of labels;
    # 7: a text file's or a labeled text's special-token spellings are read as text;
    # 8: a chat source is measured conversation by conversation, as SFT reads it, and a
    # samples prompt is encoded with the special tokens its tokenizer adds (<s>)
    Config = EvalConfig
    inputs = (
        Slot("model", "the evaluated stage"),
        Slot("tokenizer", "the tokenizer node's directory"),
        Slot("data:<source>", "tokenized validation splits (perplexity)"),
        Slot("files", "extra text files or local lm-eval tasks, by content digest"),
    )
    outputs = (
        Slot("results", "metrics as JSON and a markdown table"),
        Slot("samples", "lm-eval suites: every scored example, as JSON lines"),
    )

    def resources(self, config: EvalConfig) -> Resources:
        return Resources.machine()


backend = EvalBackend()
