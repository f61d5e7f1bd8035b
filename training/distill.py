"""Knowledge distillation: soft targets from one or more teacher models for a (smaller) student.

A streaming worker wants one small model; the best scores often come from a bigger model or an
ensemble of several runs. Distillation trains the small one on the teachers' averaged class
probabilities as well as the gold labels (Hinton et al., 2015): ``distill:`` in an experiment config.
Teachers label through the one predictor, built as the worker builds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sentiment_model.artifact import find_model_dir
from sentiment_model.labels import LABELS
from sentiment_model.predictor import predictor_from_settings, release_memory
from sentiment_model.settings import ModelSettings
from training.evaluate import serving_settings


def teacher_probabilities(teachers: Sequence[str | Path], texts: Sequence[str], temperature: float = 1.0,
                          batch_size: int = 128, model: ModelSettings | None = None) -> np.ndarray:
    """The teachers' class probabilities at ``temperature``, averaged (an ensemble's soft targets).

    ``teachers``: model or run directories; ``model``: serving settings (default ``SENTIMENT_MODEL__*``).
    """
    settings = serving_settings(model, batch_size)
    total = np.zeros((len(texts), len(LABELS)), dtype=np.float64)
    threads = torch.get_num_threads()  # the predictor sets its own; training continues with the run's
    try:
        for teacher in teachers:
            predictor = predictor_from_settings(settings, find_model_dir(teacher))
            logits = predictor.predict_logits(texts)
            total += torch.softmax(logits / temperature, dim=-1).double().numpy()
            del predictor
            release_memory()
    finally:
        torch.set_num_threads(threads)
    return (total / len(teachers)).astype(np.float32)
