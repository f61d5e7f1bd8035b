"""A sequence classifier on the masked mean of an encoder's token states (``pooling: mean``).

``BertForSequenceClassification`` classifies the [CLS] token through BERT's pooler. Sentence-transformers
encoders such as all-MiniLM-L6-v2 were trained with *mean* pooling instead: their CLS/pooler output is
not a trained sentence representation. ``MeanPoolingForSequenceClassification`` is encoder + dropout +
linear on the mean of the last hidden states over the attention mask.

It saves and loads in plain Hugging Face format, without ``trust_remote_code``: importing this module
registers its config type (``model_type: mean_pooling_classifier``) with ``AutoConfig`` and the model
with ``AutoModelForSequenceClassification``, so ``AutoModelForSequenceClassification.from_pretrained(dir)``
works once it is imported (``sentiment_model.predictor`` imports it, so every inference path has it).
The encoder is built with ``AutoModel`` from its own nested config, so BERT-family encoders and DistilBERT
are wrapped alike;
``model.base_model`` is the encoder, which is what layer freezing (``training.modeling.freeze``) walks.

It is part of the model contract (training writes such models, serving loads them): only torch and
transformers are imported here.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "mean_pooling_classifier"


class MeanPoolingConfig(PretrainedConfig):
    """The encoder's own config (nested under ``encoder``) plus the head's dropout and the labels."""

    model_type = MODEL_TYPE
    sub_configs = {"encoder": AutoConfig}

    def __init__(
        self,
        encoder: PretrainedConfig | dict[str, Any] | None = None,
        classifier_dropout: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if isinstance(encoder, dict):
            encoder = dict(encoder)
            encoder = AutoConfig.for_model(encoder.pop("model_type"), **encoder)
        self.encoder = encoder
        self.classifier_dropout = classifier_dropout
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden`` (batch, tokens, dim) over the tokens the mask keeps (all when it is None)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _drop_pooler(encoder: nn.Module) -> None:
    """BERT's pooler (dense + tanh on [CLS]) is unused here: remove it so it is neither trained nor saved."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


class MeanPoolingForSequenceClassification(PreTrainedModel):
    config_class = MeanPoolingConfig
    base_model_prefix = "encoder"  # model.base_model -> the encoder (its embeddings and layer stack)
    _supports_sdpa = True

    def __init__(self, config: MeanPoolingConfig) -> None:
        super().__init__(config)
        if config.encoder is None:
            raise ValueError("MeanPoolingConfig needs the encoder's config (`encoder`)")
        self.num_labels = config.num_labels
        self.encoder = AutoModel.from_config(config.encoder)
        _drop_pooler(self.encoder)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.encoder.hidden_size, config.num_labels)
        self._encoder_inputs = set(inspect.signature(self.encoder.forward).parameters)
        self.post_init()

    @classmethod
    def from_encoder(cls, path: str, **config_kwargs: Any) -> MeanPoolingForSequenceClassification:
        """A new head (randomly initialised) on the pretrained encoder at ``path`` (any AutoModel checkpoint,
        including a sequence-classification one, whose head is dropped)."""
        encoder = AutoModel.from_pretrained(path)
        config_kwargs.setdefault("classifier_dropout", _encoder_dropout(encoder.config))
        config = MeanPoolingConfig(encoder=encoder.config.to_dict(), **config_kwargs)
        model = cls(config)
        _drop_pooler(encoder)
        model.encoder = encoder
        model.config.encoder = encoder.config
        model.config.name_or_path = path
        return model

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple[torch.Tensor, ...]:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
        }
        # DistilBERT takes neither token_type_ids nor position_ids: pass only what the encoder accepts.
        out = self.encoder(
            **{k: v for k, v in given.items() if v is not None and k in self._encoder_inputs}, return_dict=True
        )
        pooled = mean_pool(out.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        if return_dict is False:
            rest = tuple(x for x in (out.hidden_states, out.attentions) if x is not None)
            return ((loss,) if loss is not None else ()) + (logits, *rest)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )


def _encoder_dropout(config: PretrainedConfig) -> float:
    for name in ("classifier_dropout", "seq_classif_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(config, name, None)
        if isinstance(value, int | float):
            return float(value)
    return 0.1


def is_mean_pooling(config: PretrainedConfig) -> bool:
    return getattr(config, "model_type", None) == MODEL_TYPE


AutoConfig.register(MODEL_TYPE, MeanPoolingConfig, exist_ok=True)
AutoModelForSequenceClassification.register(MeanPoolingConfig, MeanPoolingForSequenceClassification, exist_ok=True)
