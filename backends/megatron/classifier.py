"""A classify stage's model on this machine: the megatron model with its head attached,
and its logits over labeled texts (evals, exports, ``llmbuild predict``)."""

from __future__ import annotations

from typing import Any

from llmbuild.backends.megatron.artifact import StageArtifact


def load_classifier(stage: StageArtifact) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    """The stage's model (one rank, eval mode) with its head as ``model.classifier``, its
    config and its label names (a reward model's one score: ``reward``)."""
    from llmbuild.backends.megatron.objectives import ValueHead

    labels = stage.head_outputs
    head = stage.head()  # a UserError when the stage is no classifier
    model, config = stage.load_model()
    pooled = "classifier.pooler.weight" in head  # an encoder's
    bias = "classifier.score.bias" in head  # an encoder's, a reward model's
    hidden = config["architecture"]["hidden"]
    model.classifier = ValueHead(model, hidden, len(labels), bias=bias, pooled=pooled)
    model.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in head.items()})
    model.classifier.eval()
    return model, config, labels


def text_start(config: dict[str, Any], tok: Any) -> int | None:
    """The token an encoder classifier's texts begin with (``fit_text``'s ``start``):
    the tokenizer's beginning of sequence; None for a decoder's."""
    from llmbuild.backends.megatron.objective_builders import encoder_start

    from llmbuild.errors import UserError
    from llmbuild.spec.model import Architecture

    try:
        return encoder_start(tok.bos_id, Architecture.model_validate(config["architecture"]))
    except ValueError as e:
        raise UserError(str(e)) from None


def class_logits(model: Any, samples: Any, batch_size: int) -> Any:
    """The head's float32 logits ``[n, labels]`` for every text of ``samples``
    (``posttrain_data.LabeledTexts``), in order."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = samples.batch(list(range(start, min(start + batch_size, len(samples)))))
            scores = model.classifier.scores(model, batch, "fp32")
            out.append(scores.reshape(scores.shape[0], -1))  # a reward's one score too
    return torch.cat(out) if out else torch.zeros(0, model.classifier.outputs)
