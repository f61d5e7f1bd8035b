"""Knowledge distillation: soft targets from one or more teacher models for a (smaller) student.

A streaming worker wants one small model; the best scores often come from a bigger model or an
ensemble of several runs. Distillation trains the small one on the teachers' averaged class
probabilities as well as the gold labels (Hinton et al., 2015): ``distill:`` in an experiment config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from training import heads  # noqa: F401  (registers the mean-pooling head with the Auto classes)
from training.config import LABELS


def model_label_order(model) -> list[int]:
    """Column of the model's logits for each of our label ids (models may order labels differently)."""
    id2label = {int(k): str(v).lower() for k, v in model.config.id2label.items()}
    by_name = {name: i for i, name in id2label.items()}
    missing = [n for n in LABELS if n not in by_name]
    if missing:
        raise ValueError(
            f"model's id2label {model.config.id2label} lacks {missing}; expected negative/neutral/positive"
        )
    return [by_name[n] for n in LABELS]


def model_dir_of(path: str | Path) -> Path:
    """A training run directory (with ``model/``) or a model directory itself."""
    path = Path(path)
    for candidate in (path / "model", path):
        if (candidate / "config.json").exists():
            return candidate
    raise FileNotFoundError(f"{path}: not a Hugging Face model directory nor a run directory with model/")


def trained_max_length(model_dir: Path, default: int = 128) -> int:
    info = model_dir / "training_run.json"
    return json.loads(info.read_text())["config"]["max_length"] if info.exists() else default


def predict_logits(model_dir: str | Path, texts: Sequence[str], *, max_length: int | None = None,
                   batch_size: int = 64, desc: str = "predict") -> np.ndarray:
    """Logits of a saved model, one row per text, columns in our label order (negative, neutral, positive)."""
    model_dir = model_dir_of(model_dir)
    max_length = max_length or trained_max_length(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    columns = model_label_order(model)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    logits = np.empty((len(texts), len(LABELS)), dtype=np.float32)
    with torch.inference_mode():
        for lo in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            idx = order[lo: lo + batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            logits[idx] = model(**enc).logits[:, columns].float().numpy()
    return logits


def teacher_probabilities(teachers: Sequence[str | Path], texts: Sequence[str], temperature: float = 1.0,
                          batch_size: int = 128) -> np.ndarray:
    """The teachers' class probabilities at ``temperature``, averaged (an ensemble's soft targets)."""
    total = np.zeros((len(texts), len(LABELS)), dtype=np.float64)
    for i, teacher in enumerate(teachers, 1):
        logits = predict_logits(teacher, texts, batch_size=batch_size, desc=f"teacher {i}/{len(teachers)}")
        total += torch.softmax(torch.from_numpy(logits) / temperature, dim=-1).double().numpy()
    return (total / len(teachers)).astype(np.float32)
