"""What a model directory is, and the one reader of the ``training_run.json`` training leaves in it.

A model directory is a Hugging Face directory (``config.json``, weights, tokenizer). Training adds
``training_run.json`` (run id, resolved config, scores, the score temperature fitted on validation) and
``reference_profile.json`` (``sentiment_model.profile``). A run directory holds the model under ``model/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentiment_model.cleaning import CleaningConfig
from sentiment_model.errors import ModelNotFoundError, UserError
from sentiment_model.long_text import LongTextConfig

log = logging.getLogger(__name__)

MODEL_CONFIG = "config.json"
RUN_INFO_FILE = "training_run.json"
_SHAPES = {"run_id": str, "config": dict, "test_metrics": dict}  # what readers rely on, when present


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds a Hugging Face model (its ``config.json``)."""
    return (Path(path) / MODEL_CONFIG).exists()


def find_model_dir(path: str | Path) -> Path:
    """A training run directory (with ``model/``) or a model directory itself -> the model directory."""
    path = Path(path)
    for candidate in (path / "model", path):
        if is_model_dir(candidate):
            return candidate
    raise ModelNotFoundError(f"{path}: no model found (neither {path / 'model'} nor {path} has a {MODEL_CONFIG}); "
                             "give a model directory or a training run directory such as runs/<run_id>")


def require_model_dir(path: str | Path, hint: str = "") -> Path:
    """``path`` itself, if it is a model directory; else a ``ModelNotFoundError`` naming what to do."""
    path = Path(path)
    if not is_model_dir(path):
        raise ModelNotFoundError(f"no model at {path} ({MODEL_CONFIG} missing)" + (f": {hint}" if hint else ""))
    return path


@dataclass(frozen=True)
class RunInfo:
    """``training_run.json``: empty (all None) for a model trained elsewhere."""

    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    test_metrics: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, model_dir: str | Path, strict: bool = False) -> RunInfo:
        """The model's record; a missing one is empty. An unreadable or misshapen one is empty with a warning
        (serving goes on), or with ``strict`` (publish: the record is copied into the store) a ``UserError``."""
        path = Path(model_dir) / RUN_INFO_FILE
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:  # not JSON, or not UTF-8
            return cls._bad(path, f"is not valid JSON ({e})", strict)
        if not isinstance(raw, dict) or any(k in raw and not isinstance(raw[k], t) for k, t in _SHAPES.items()):
            return cls._bad(path, "is not a training run's record (a JSON object whose run_id is a string and "
                            "config and test_metrics are objects)", strict)
        return cls(raw.get("run_id") or None, raw.get("config") or {}, raw.get("test_metrics") or {}, raw)

    @classmethod
    def _bad(cls, path: Path, what: str, strict: bool) -> RunInfo:
        if strict:
            raise UserError(f"{path} {what}; fix or remove it and try again")
        log.warning("%s %s; treating the model as trained elsewhere", path, what)
        return cls()

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model")

    @property
    def max_length(self) -> int | None:
        return self.config.get("max_length")

    @property
    def temperature(self) -> float:
        """The softmax temperature fitted on validation (``calibration.temperature``, ``training.calibration``);
        1 (the raw softmax) for a model without one, or with one that is not a positive number (warned)."""
        calibration = self.raw.get("calibration")
        value = calibration.get("temperature") if isinstance(calibration, dict) else None
        if value is None:
            return 1.0
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            log.warning("training_run.json: calibration.temperature %r is not a positive number; serving with "
                        "T = 1 (run `sentiment calibrate` to fit it again)", value)
            return 1.0
        return float(value)

    @property
    def cleaning(self) -> CleaningConfig | None:
        """The text cleaning the model was trained with (``config.data.clean``), or None."""
        clean = (self.config.get("data") or {}).get("clean")
        return CleaningConfig.model_validate(clean) if clean else None

    @property
    def long_text(self) -> LongTextConfig:
        """How the model reads a text over its window (``config.long_text``). A model recorded without it gets
        ``LongTextConfig()``'s measured default: its training texts fit the window (64 tokens: under 2% of
        any open test set is longer), so nothing it learnt depends on how they were cut."""
        cfg = self.config.get("long_text")
        return LongTextConfig.model_validate(cfg) if cfg else LongTextConfig()


def write_run_info(model_dir: Path, info: dict[str, Any]) -> Path:
    """Write ``training_run.json`` atomically (a temporary file renamed over it): a worker loading the model
    meanwhile reads the old record or the new one, never half of one."""
    path = Path(model_dir) / RUN_INFO_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_calibration(model_dir: Path, calibration: dict[str, Any]) -> Path:
    """Set the ``calibration`` entry of the model's ``training_run.json`` (created if missing), atomically.
    An unreadable record is a ``UserError``: it would be lost, not updated."""
    info = dict(RunInfo.read(model_dir, strict=True).raw)
    info["calibration"] = calibration
    return write_run_info(model_dir, info)


def model_version(model_dir: Path, info: RunInfo | None = None) -> str:
    """The version a row records: the training run id if the model came from one, else the dir name
    (``info``: the model's record when the caller has read it already)."""
    return (info or RunInfo.read(model_dir)).run_id or Path(model_dir).resolve().name
