"""Loading a base model for fine-tuning logs at INFO: the new classification head that transformers reports as a
WARNING "LOAD REPORT" is what fine-tuning starts from, so it is said once at INFO; a real mismatch still warns."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from training.modeling import load_base


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Records:
    """Every record of transformers (which does not propagate to the root logger) and of training."""
    handler = Records()
    loggers = [logging.getLogger("transformers"), logging.getLogger("training")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield handler
    for lg, level in zip(loggers, old, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def _encoder_without_head(tmp_path: Path) -> Path:
    """A tiny BERT encoder checkpoint (no classifier), with a tokenizer: what a pretrained base looks like."""
    from transformers import BertConfig, BertModel

    from training.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny", "bert", n_layers=2)
    base = tmp_path / "encoder"
    BertModel(BertConfig.from_pretrained(tiny)).save_pretrained(base)
    for f in tiny.glob("tokenizer*"):
        shutil.copy(f, base / f.name)
    return base


def test_a_new_head_is_reported_at_info_not_as_a_warning(tmp_path: Path, records: Records) -> None:
    base = _encoder_without_head(tmp_path)
    records.records.clear()
    model, _, _ = load_base(str(base), "cls")
    warnings = [r.getMessage()[:200] for r in records.records if r.levelno >= logging.WARNING]
    assert warnings == []
    info = [r.getMessage() for r in records.records if r.name == "training.modeling"]
    assert info == [f"{base}: new classification head (classifier.bias, classifier.weight), initialised for "
                    "fine-tuning"]
    assert model.config.num_labels == 3
    # the report is quieted for that one call only: transformers' logger has no filter left behind
    assert logging.getLogger("transformers.modeling_utils").filters == []
