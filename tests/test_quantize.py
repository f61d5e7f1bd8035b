"""Serving paths of the predictor: int8 on CPU stays close to fp32, the training-time cleaning is applied,
and the GPU path (autocast, pinned memory, overlapped tokenisation) agrees with the CPU when a GPU exists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sentiment_model.predictor import Predictor, predictor_from_settings
from stream.settings import ModelSettings

TEXTS = ["love it", "terrible service and slow delivery " * 5, "ok", "", "the battery works great",
         "never again " * 40, "fine", "worst app", "@someone was right, www.example.com is awful"]


def test_int8_quantises_the_linear_layers_and_stays_close_to_fp32(tiny_model: Path) -> None:
    fp32 = Predictor(tiny_model, device="cpu", threads=1, batch_size=4)
    int8 = predictor_from_settings(ModelSettings(device="cpu", threads=1, batch_size=4, quantize="int8"), tiny_model)
    assert fp32.path == "cpu fp32" and "int8" in int8.path
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.model.modules())
    a, b = fp32.predict_probs(TEXTS), int8.predict_probs(TEXTS)
    assert torch.allclose(a, b, atol=0.05), (a - b).abs().max()
    assert torch.allclose(b.sum(-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_serving_applies_the_cleaning_the_model_was_trained_with(tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    plain = Predictor(model, device="cpu", threads=1)
    assert plain.clean is None
    (model / "training_run.json").write_text(json.dumps(
        {"run_id": "cleaned", "config": {"data": {"clean": {"mentions": True, "urls": True, "whitespace": True}}}}))
    cleaned = Predictor(model, device="cpu", threads=1)
    assert cleaned.version == "cleaned" and cleaned.clean is not None
    raw, as_trained = "@bob   said www.x.com is good", "@user said http is good"
    assert cleaned.predict([raw])[0].probs == pytest.approx(plain.predict([as_trained])[0].probs, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here: the cuda path is exercised on GPU machines")
def test_gpu_path_agrees_with_cpu(tiny_model: Path) -> None:
    cpu = Predictor(tiny_model, device="cpu", threads=1)
    gpu = predictor_from_settings(ModelSettings(device="cuda", cuda_batch_size=3), tiny_model)
    assert gpu.batch_size == 3 and "autocast" in gpu.path
    many = TEXTS * 5
    assert torch.allclose(cpu.predict_probs(many), gpu.predict_probs(many), atol=0.03)
