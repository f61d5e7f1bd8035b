"""``pooling: mean``: a linear head on the masked token mean (sentiment_model/heads.py), on tiny random models.

It must train, save and reload in plain Hugging Face format (Auto classes, no trust_remote_code), serve
through the one predictor (fp32 and int8), respect layer freezing and ignore padding.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from sentiment_model.heads import MODEL_TYPE, MeanPoolingForSequenceClassification, mean_pool
from sentiment_model.predictor import Predictor
from tests.support import tiny_config
from training.config import ConfigError, config_from_dict
from training.evaluate import DataSpec, evaluate_model
from training.modeling import encoder_layers, freeze, load_base
from training.tiny import build_tiny_model, write_synthetic_csv
from training.train import run_experiment

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
              pytest.mark.slow]  # trains tiny models

TEXTS = [
    "the service was great and fast",
    "awful rude staff",
    "it arrived in a box",
    "ok",
    "the product was the worst and the delivery was slow and i hate it " * 2,
    "love it",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pooling")
    build_tiny_model(root / "distilbert", "distilbert", n_layers=2)
    build_tiny_model(root / "bert", "bert", n_layers=3)
    write_synthetic_csv(root / "synthetic.csv", 600, seed=1)
    return root


def mean_config(workdir: Path, **extra):
    """The training tests' tiny config (tests/test_training_run.py) on the BERT checkpoint, mean pooling."""
    settings = {"name": "tiny-mean", "base_model": str(workdir / "bert"), "pooling": "mean", "epochs": 6,
                "eval_steps": 40, "save_top_k": 1, "metric_for_best_model": "macro_recall"}
    return tiny_config(workdir, **(settings | extra))


@pytest.fixture(scope="module")
def trained(workdir: Path):
    return run_experiment(mean_config(workdir), workdir / "runs")


def test_pooling_defaults_to_cls_and_is_validated(workdir: Path) -> None:
    assert mean_config(workdir, pooling="cls").pooling == "cls"
    assert config_from_dict({"data": {"path": "x.csv"}}).pooling == "cls"
    with pytest.raises(ConfigError, match="pooling"):
        mean_config(workdir, pooling="max")


def test_mean_pooling_model_trains_and_beats_chance(trained) -> None:
    losses = [h["loss"] for h in trained.history if "loss" in h and "eval_loss" not in h]
    assert losses[-1] < 0.5 * losses[0]
    assert trained.test["accuracy"] > 0.8 and trained.test["macro_recall"] > 0.8  # chance: 1/3


def test_saved_model_is_plain_hugging_face_format(trained) -> None:
    config = (trained.model_dir / "config.json").read_text()
    assert f'"model_type": "{MODEL_TYPE}"' in config and "auto_map" not in config
    weights = load_file(trained.model_dir / "model.safetensors")
    assert "classifier.weight" in weights and not any("pooler" in k for k in weights)
    model = AutoModelForSequenceClassification.from_pretrained(trained.model_dir).eval()
    assert isinstance(model, MeanPoolingForSequenceClassification)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    tokenizer = AutoTokenizer.from_pretrained(trained.model_dir)
    logits = model(**tokenizer(["the service was great and fast"], return_tensors="pt")).logits
    assert model.config.id2label[int(logits.argmax())] == "positive"


def test_predictor_serves_it_with_the_same_predictions(trained) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(trained.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained.model_dir)
    with torch.inference_mode():
        direct = torch.cat(
            [
                torch.softmax(model(**tokenizer([t], truncation=True, max_length=128, return_tensors="pt")).logits, -1)
                for t in TEXTS
            ]
        )
    predictor = Predictor(trained.model_dir, device="cpu", threads=1, batch_size=4)
    assert torch.allclose(predictor.predict_probs(TEXTS), direct, atol=1e-5)
    int8 = Predictor(trained.model_dir, device="cpu", threads=1, batch_size=4, quantize="int8")
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    assert torch.allclose(int8.predict_probs(TEXTS), direct, atol=0.05)


def test_predictor_alone_registers_the_head(trained) -> None:
    """A serving process imports sentiment_model.predictor, not the training code, before loading the model."""
    code = (
        "import sys; from sentiment_model.predictor import Predictor; "
        f"p = Predictor({str(trained.model_dir)!r}, device='cpu', threads=1); "
        "print(type(p.model).__name__, p.predict(['the service was great and fast'])[0].label)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["MeanPoolingForSequenceClassification", "positive"]


def test_evaluate_scores_a_mean_pooling_model(trained, workdir: Path) -> None:
    result = evaluate_model(trained.model_dir, DataSpec(str(workdir / "synthetic.csv")))
    assert result["rows"] == 600 and result["accuracy"] > 0.8


def test_padding_does_not_change_a_prediction(trained) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(trained.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained.model_dir)
    with torch.inference_mode():
        alone = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits
        padded_batch = tokenizer(TEXTS[:1] + TEXTS[4:5], padding=True, return_tensors="pt")
        assert padded_batch["attention_mask"][0].sum() < padded_batch["attention_mask"].shape[1]  # really padded
        batched = model(**padded_batch).logits[:1]
    assert torch.allclose(alone, batched, atol=1e-5)
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.allclose(mean_pool(hidden, mask)[0], hidden[0, :2].mean(0))


@pytest.mark.parametrize(("arch", "layers", "n_frozen"), [("distilbert", 2, 1), ("bert", 3, 2)])
def test_freezing_a_mean_pooling_model_leaves_exactly_those_parameters_unchanged(
    workdir: Path, arch: str, layers: int, n_frozen: int
) -> None:
    cfg = mean_config(
        workdir, base_model=str(workdir / arch), freeze_layers=n_frozen, epochs=1, eval_steps=100, weight_decay=0.1
    )
    model, _, _ = load_base(cfg.base_model, "mean")
    assert len(encoder_layers(model)) == layers
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = run_experiment(cfg, workdir / f"freeze-{arch}")
    after = load_file(result.model_dir / "model.safetensors")
    assert set(after) == set(before)
    layer_word = "transformer.layer" if arch == "distilbert" else "encoder.layer"
    frozen_prefixes = ["encoder.embeddings."] + [f"encoder.{layer_word}.{i}." for i in range(n_frozen)]
    checked_frozen = checked_trained = 0
    for name, tensor in after.items():
        if any(name.startswith(p) for p in frozen_prefixes):
            assert torch.equal(tensor, before[name]), f"{name} changed although frozen"
            checked_frozen += 1
        elif "weight" in name and (f"{layer_word}." in name or name.startswith("classifier.")):
            assert not torch.equal(tensor, before[name]), f"{name} did not train"
            checked_trained += 1
    assert checked_frozen > 5 and checked_trained > 3


def test_freeze_all_leaves_only_the_head_trainable(workdir: Path) -> None:
    for arch, n in (("distilbert", 2), ("bert", 3)):
        model, _, _ = load_base(str(workdir / arch), "mean")
        assert model.base_model is model.encoder
        freeze(model, n, embeddings=True)
        assert [k for k, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]


def test_a_mean_pooling_base_is_fine_tuned_as_it_is(trained) -> None:
    model, _, _ = load_base(str(trained.model_dir), "mean")
    saved = load_file(trained.model_dir / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(ConfigError, match="pooling: mean"):
        load_base(str(trained.model_dir), "cls")
