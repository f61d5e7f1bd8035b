"""How a model is served: ``SENTIMENT_MODEL__*`` (device, threads, serving path, batch sizes, max length).

Part of ``stream.settings.Settings`` (``settings.model``); ``model_settings_from_env`` reads the same
variables for processes that have no full settings (training's ``evaluate`` and distillation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from sentiment_model.settings_error import settings_error


class ModelSettings(BaseModel):
    dir: Path | None = Field(None, description="Hugging Face model directory; default: the registered one")
    version: str | None = Field(None, description="label stored with each row; default: from the model dir")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_length: int | None = Field(
        None, ge=8, le=512, description="tokens fed to the model; default: the length it was trained with "
        "(training_run.json), else 128; longer texts are read as the model's long_text says")
    batch_size: int = Field(8, ge=1, description="texts per forward pass (8 is fastest on CPU, see bench)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores")
    quantize: Literal["auto", "none", "int8", "onnx", "onnx-int8"] = Field(
        "auto", description="CPU serving path: onnx-int8 = ONNX Runtime, int8 weights (the fastest within a point "
        "of macro-F1, README 'Performance'); onnx = ONNX Runtime fp32; int8 = torch dynamic int8; none = torch "
        "fp32; auto = onnx-int8. An ONNX path that cannot load serves torch at the same precision. GPU: ignored")
    cache_dir: Path | None = Field(None, description="where exported ONNX graphs are cached (keyed by the model's "
                                   "content); default: ~/.cache/sentiment-stream/onnx")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="GPU autocast dtype; auto: bf16 where supported, else fp16 (CPU stays fp32)")
    cuda_batch_size: int = Field(256, ge=1, description="texts per forward pass on a GPU (replaces batch_size)")


class _ModelEnv(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENTIMENT_", env_nested_delimiter="__", env_file=".env",
                                      env_file_encoding="utf-8", extra="ignore")

    model: ModelSettings = ModelSettings()


def model_settings_from_env() -> ModelSettings:
    """``SENTIMENT_MODEL__*`` from the environment or ``.env``, exactly as ``Settings().model`` reads them."""
    try:
        return _ModelEnv().model
    except (ValidationError, SourceError, UnicodeDecodeError) as err:
        raise settings_error(err) from None
