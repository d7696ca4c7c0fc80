"""BERT: ``BertForMaskedLM`` (an encoder, ``style = "bert"``), and as a classifier
``BertForSequenceClassification``."""

from llmbuild.backends.families.base import Family
from llmbuild.backends.families.bert import config, weights

FAMILY = Family(
    name="bert",
    model_type="bert",
    hf_class="BertForMaskedLM",
    style="bert",
    architecture=config.architecture,
    hf_config=config.hf_config,
    rules=weights.rules,
    gguf=None,
    adapter_modules={},
    layer_prefix="bert.encoder.layer.{}.",
    ignored=weights.IGNORED,
    auto_class="AutoModelForMaskedLM",
    tied=weights.TIED,
    lm_head=("cls.",),
    classifier_names=weights.CLASSIFIER_NAMES,
)
