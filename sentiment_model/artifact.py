"""What a model directory is, and the one reader of the ``training_run.json`` training leaves in it.

A model directory is a Hugging Face directory (``config.json``, weights, tokenizer). Training adds
``training_run.json`` (run id, resolved config, scores) and ``reference_profile.json``
(``sentiment_model.profile``). A run directory holds the model under ``model/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentiment_model.cleaning import CleaningConfig
from sentiment_model.errors import ModelNotFoundError, UserError

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
            raise UserError(f"{path} {what}; fix or remove it and publish again")
        log.warning("%s %s; treating the model as trained elsewhere", path, what)
        return cls()

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model")

    @property
    def max_length(self) -> int | None:
        return self.config.get("max_length")

    @property
    def cleaning(self) -> CleaningConfig | None:
        """The text cleaning the model was trained with (``config.data.clean``), or None."""
        clean = (self.config.get("data") or {}).get("clean")
        return CleaningConfig.model_validate(clean) if clean else None


def write_run_info(model_dir: Path, info: dict[str, Any]) -> Path:
    path = Path(model_dir) / RUN_INFO_FILE
    path.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def model_version(model_dir: Path) -> str:
    """The version a row records: the training run id if the model came from one, else the dir name."""
    return RunInfo.read(model_dir).run_id or Path(model_dir).resolve().name
