"""The ONNX Runtime CPU path: same labels as torch fp32, the exported graph cached by content and written
atomically, every head (DistilBERT, BERT, mean pooling) exported, and torch serving when it cannot load."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sentiment_model.heads import MeanPoolingForSequenceClassification
from sentiment_model.onnx_runtime import cache_key
from sentiment_model.predictor import Predictor, predictor_from_settings
from stream.settings import ModelSettings
from tests.support import make_tiny_model
from training.tiny import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["love it", "terrible service and slow delivery " * 5, "ok", "", "the battery works great",
         "never again " * 40, "fine", "worst app", "@someone was right, www.example.com is awful",
         "good", "bad bad bad", "it arrived", "great price, awful support", "meh"] * 3


def cpu(model: Path, quantize: str, cache: Path) -> Predictor:
    return Predictor(model, device="cpu", threads=1, batch_size=8, max_length=64, quantize=quantize,
                     onnx_cache_dir=cache)


def graphs(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


def test_onnx_paths_agree_with_torch_fp32_and_auto_is_the_default(tiny_model: Path, tmp_path: Path) -> None:
    torch_fp32 = cpu(tiny_model, "none", tmp_path)
    onnx_fp32, onnx_int8 = cpu(tiny_model, "onnx", tmp_path), cpu(tiny_model, "onnx-int8", tmp_path)
    assert torch_fp32.path == "cpu fp32"
    assert "onnxruntime" in onnx_fp32.path and onnx_fp32.path.endswith("fp32")
    assert "onnxruntime" in onnx_int8.path and "int8" in onnx_int8.path
    want = torch_fp32.predict_logits(TEXTS)
    assert torch.allclose(onnx_fp32.predict_logits(TEXTS), want, atol=1e-4)
    int8 = onnx_int8.predict_logits(TEXTS)
    assert (int8.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9
    assert torch.allclose(int8, want, atol=0.1), (int8 - want).abs().max()
    assert [p.label for p in onnx_fp32.predict(TEXTS)] == [p.label for p in torch_fp32.predict(TEXTS)]

    assert ModelSettings().quantize == "auto"  # what the worker, classify, evaluate and the gate get
    served = predictor_from_settings(ModelSettings(device="cpu", threads=1, cache_dir=tmp_path), tiny_model)
    assert served.path == onnx_int8.path
    assert len(graphs(tmp_path)) == 2  # fp32 and int8, the latter reused by `auto`


@pytest.mark.parametrize("arch", ["bert", "mean-bert", "mean-distilbert"])
def test_bert_and_mean_pooling_heads_export(arch: str, tmp_path: Path) -> None:
    model = tmp_path / arch
    base = arch.removeprefix("mean-")
    build_tiny_model(model, base)  # type: ignore[arg-type]
    if arch.startswith("mean-"):
        torch.manual_seed(1)
        MeanPoolingForSequenceClassification.from_encoder(str(model),
                                                          id2label={0: "negative", 1: "neutral", 2: "positive"},
                                                          label2id={"negative": 0, "neutral": 1, "positive": 2}
                                                          ).save_pretrained(model)
    onnx = cpu(model, "onnx", tmp_path / "cache")
    assert "onnxruntime" in onnx.path, onnx.path
    assert torch.allclose(onnx.predict_logits(TEXTS), cpu(model, "none", tmp_path).predict_logits(TEXTS), atol=1e-4)


def test_the_cache_is_keyed_by_content_and_reused(tiny_model: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="sentiment_model.onnx_runtime"):
        first = cpu(tiny_model, "onnx-int8", cache)
        (graph,) = graphs(cache)  # one file, no temporary folder left behind
        built = (cache / graph).stat().st_mtime_ns
        second = cpu(tiny_model, "onnx-int8", cache)
    assert [r.message.split()[-1] for r in caplog.records if "ONNX graph" in r.message] == ["now", "cache"]
    assert (cache / graph).stat().st_mtime_ns == built and graphs(cache) == [graph]
    assert torch.equal(first.predict_logits(TEXTS), second.predict_logits(TEXTS))
    other = make_tiny_model(tmp_path / "retrained", seed=1)  # same shape, other weights: another graph
    assert cache_key(other, True) != cache_key(tiny_model, True) != cache_key(tiny_model, False)


def test_workers_starting_together_build_one_whole_graph(tiny_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code = ("import sys; from pathlib import Path; from sentiment_model.predictor import Predictor; "
            "p = Predictor(sys.argv[1], device='cpu', threads=1, quantize='onnx-int8', "
            "onnx_cache_dir=Path(sys.argv[2])); assert 'onnxruntime' in p.path, p.path; "
            "print(p.predict(['love it'])[0].label)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_model), str(cache)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]
    assert len(graphs(cache)) == 1 and graphs(cache)[0].endswith("-int8.onnx")  # no half file, no leftovers
    assert cpu(tiny_model, "onnx-int8", cache).predict(["love it"])[0].label == outs[0][0].strip()


def test_an_unwritable_cache_still_serves_onnx_without_writing(tiny_model: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING):
        p = cpu(tiny_model, "onnx-int8", blocked / "onnx")
    assert "onnxruntime" in p.path
    assert any("not writable" in r.message for r in caplog.records)
    assert blocked.read_text().startswith("a file")


@pytest.mark.parametrize(("quantize", "torch_path"), [("onnx-int8", "cpu int8"), ("auto", "cpu int8"),
                                                      ("onnx", "cpu fp32")])
def test_without_onnxruntime_torch_serves_with_one_log_line(tiny_model: Path, tmp_path: Path, quantize: str,
                                                            torch_path: str, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with caplog.at_level(logging.WARNING):
        p = cpu(tiny_model, quantize, tmp_path)
    assert p.path.startswith(torch_path)
    warned = [r.message for r in caplog.records if "ONNX Runtime path unavailable" in r.message]
    assert len(warned) == 1 and "ModuleNotFoundError" in warned[0] and f"torch {torch_path[4:]}" in warned[0]
    assert p.predict(TEXTS)[0].label in {"negative", "neutral", "positive"}
    assert not (tmp_path / "onnx").exists() and not any(tmp_path.iterdir())


def test_a_failed_export_falls_back_to_torch(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter cannot trace this model")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with caplog.at_level(logging.WARNING):
        p = cpu(tiny_model, "onnx-int8", tmp_path / "cache")
    assert p.path.startswith("cpu int8")
    assert any("cannot trace" in r.message for r in caplog.records)
    assert graphs(tmp_path / "cache") == []  # the failed build left nothing in the cache
    assert torch.allclose(p.predict_probs(TEXTS), cpu(tiny_model, "none", tmp_path).predict_probs(TEXTS), atol=0.05)
