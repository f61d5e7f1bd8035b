"""End-to-end training on tiny randomly initialised models and a learnable synthetic task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from typer.testing import CliRunner

from sentiment_app.cli import app  # the root CLI: it turns user errors into one line and exit code 2
from sentiment_app.cli.training import experiments
from sentiment_model.predictor import Predictor
from sentiment_model.settings import ModelSettings
from tests.support import tiny_config
from training.config import ConfigError
from training.distill import teacher_probabilities
from training.evaluate import DataSpec, evaluate_model
from training.modeling import encoder_layers, freeze, layerwise_param_groups
from training.tiny import build_tiny_model, write_synthetic_csv
from training.tracker import read_runs
from training.train import balanced_weights, build_training_args, run_experiment

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]  # trains tiny models


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("training")
    build_tiny_model(root / "distilbert", "distilbert", n_layers=2)
    build_tiny_model(root / "bert", "bert", n_layers=3)
    write_synthetic_csv(root / "synthetic.csv", 600, seed=1)
    return root


@pytest.fixture(scope="module")
def trained(workdir: Path):
    return run_experiment(tiny_config(workdir), workdir / "runs")


def test_training_lowers_loss_and_beats_chance(trained) -> None:
    losses = [h["loss"] for h in trained.history if "loss" in h and "eval_loss" not in h]
    assert losses[-1] < 0.5 * losses[0]
    assert trained.test["accuracy"] > 0.8  # chance is 1/3 on this balanced 3-class task
    assert trained.test["macro_recall"] > 0.8
    assert set(trained.test["per_class"]) == {"negative", "neutral", "positive"}


def test_run_directory_has_every_artefact(trained) -> None:
    names = {p.name for p in trained.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "validation_metrics.json", "test_metrics.json",
            "classification_report.txt", "confusion_matrix.png", "training_curves.png", "timing.json",
            "environment.json", "data.json", "model", "checkpoints"} <= names
    evals = [json.loads(line) for line in (trained.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval_macro_f1" in e for e in evals) >= 3
    timing = json.loads((trained.run_dir / "timing.json").read_text())
    assert timing["train_samples_per_s"] > 0 and timing["train_samples"] == 10 * 420
    env = json.loads((trained.run_dir / "environment.json").read_text())
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (trained.run_dir / png).read_bytes()[:4] == b"\x89PNG"


def test_only_top_k_checkpoints_are_kept_and_best_is_saved(trained) -> None:
    evals = {h["step"]: h["eval_macro_f1"] for h in trained.history if "eval_macro_f1" in h}
    kept = sorted(int(p.name.split("-")[1]) for p in (trained.run_dir / "checkpoints").iterdir())
    assert len(kept) == 2 and len(evals) > 2
    ranked = sorted(evals, key=lambda s: (-evals[s], s))
    assert kept == sorted(ranked[:2])
    assert trained.best_step == ranked[0]
    best = load_file(trained.run_dir / "checkpoints" / f"checkpoint-{trained.best_step}" / "model.safetensors")
    final = load_file(trained.model_dir / "model.safetensors")
    assert all(torch.equal(best[k], final[k]) for k in final)


def test_saved_model_loads_with_auto_classes_and_label_names(trained) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(trained.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(trained.model_dir)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    logits = model(**tokenizer(["the service was great and fast"], return_tensors="pt")).logits
    assert model.config.id2label[int(logits.argmax())] == "positive"
    info = json.loads((trained.model_dir / "training_run.json").read_text())
    assert info["run_id"] == trained.run_id and info["test_metrics"]["accuracy"] == trained.test["accuracy"]


def test_tracker_row_and_experiments_command(trained, capsys: pytest.CaptureFixture[str]) -> None:
    run_root = trained.run_dir.parent
    rows = read_runs(run_root / "experiments.csv")
    assert any(r["run_id"] == trained.run_id for r in rows)
    experiments(run_root=run_root, plot=True, markdown=run_root / "runs.md")  # a plain function call works
    assert (run_root / "experiments.png").is_file()
    assert "tiny" in capsys.readouterr().out
    table = (run_root / "runs.md").read_text().splitlines()
    assert table[0].startswith("| run id | name |") and any(trained.run_id in line for line in table)


def test_evaluate_scores_a_file_with_other_label_names(trained, workdir: Path) -> None:
    rows = (workdir / "synthetic.csv").read_text().splitlines()
    renamed = [rows[0]] + [r.replace(",negative", ",bad").replace(",positive", ",good") for r in rows[1:]]
    path = workdir / "renamed.csv"
    path.write_text("\n".join(renamed) + "\n")
    spec = DataSpec(str(path), label_map={"bad": "negative", "neutral": "neutral", "good": "positive"})
    result = evaluate_model(trained.model_dir, spec, out_dir=workdir / "eval")
    assert result["rows"] == 600 and result["accuracy"] > 0.8
    assert (workdir / "eval" / "confusion_matrix.png").is_file()


def test_repeated_run_with_same_seed_reproduces_metrics(trained, workdir: Path) -> None:
    again = run_experiment(tiny_config(workdir), workdir / "runs")
    assert again.run_id != trained.run_id
    assert again.test == trained.test and again.validation == trained.validation
    assert [h.get("loss") for h in again.history] == [h.get("loss") for h in trained.history]


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resumed_run_reproduces_the_uninterrupted_run(workdir: Path) -> None:
    cfg = tiny_config(workdir, epochs=None, max_steps=40, eval_steps=10, save_top_k=5)
    full = run_experiment(cfg, workdir / "resume")
    run_experiment(cfg, workdir / "resume", run_id="cut", callbacks=[StopAt(20)])
    resumed = run_experiment(cfg, workdir / "resume", run_id="cut", resume=True)
    assert resumed.timing["resumed"] and resumed.timing["steps"] == 40
    assert resumed.test["accuracy"] == pytest.approx(full.test["accuracy"], abs=1e-9)
    assert resumed.validation["macro_f1"] == pytest.approx(full.validation["macro_f1"], abs=1e-9)


@pytest.mark.parametrize(("arch", "layers", "n_frozen"), [("distilbert", 2, 1), ("bert", 3, 2)])
def test_freezing_leaves_exactly_those_parameters_unchanged(workdir: Path, arch: str, layers: int,
                                                            n_frozen: int) -> None:
    before = load_file(workdir / arch / "model.safetensors")
    cfg = tiny_config(workdir, base_model=str(workdir / arch), freeze_layers=n_frozen, epochs=1,
                      eval_steps=100, weight_decay=0.1)
    result = run_experiment(cfg, workdir / f"freeze-{arch}")
    after = load_file(result.model_dir / "model.safetensors")
    layer_word = "transformer.layer" if arch == "distilbert" else "encoder.layer"
    frozen_prefixes = ["embeddings."] + [f"{layer_word}.{i}." for i in range(n_frozen)]
    checked_frozen = checked_trained = 0
    for name, tensor in after.items():
        if name not in before:
            continue
        if any(p in name for p in frozen_prefixes):
            assert torch.equal(tensor, before[name]), f"{name} changed although frozen"
            checked_frozen += 1
        elif "weight" in name and f"{layer_word}." in name:
            assert not torch.equal(tensor, before[name]), f"{name} did not train"
            checked_trained += 1
    assert checked_frozen > 5 and checked_trained > 3


def test_freeze_finds_layers_on_both_families(workdir: Path) -> None:
    for arch, n in (("distilbert", 2), ("bert", 3)):
        model = AutoModelForSequenceClassification.from_pretrained(workdir / arch)
        assert len(encoder_layers(model)) == n
        names = freeze(model, n, embeddings=True)
        trainable = [k for k, p in model.named_parameters() if p.requires_grad]
        assert names and all("classifier" in k or "pre_classifier" in k or "pooler" in k for k in trainable)
        with pytest.raises(ConfigError, match="only"):
            freeze(model, n + 1, embeddings=False)


def test_balanced_weights_give_each_class_equal_total_weight() -> None:
    labels = [0] * 10 + [1] * 30 + [2] * 60
    w = balanced_weights(labels)
    totals = [w[c].item() * labels.count(c) for c in range(3)]
    assert totals == pytest.approx([totals[0]] * 3)
    milder = balanced_weights(labels, 0.5)
    assert milder.tolist() == pytest.approx((w**0.5).tolist())
    assert w[0] > milder[0] > 1 > milder[2] > w[2]


def test_class_weighted_run_trains(workdir: Path) -> None:
    result = run_experiment(tiny_config(workdir, class_weights="balanced"), workdir / "weighted")
    assert result.test["accuracy"] > 0.6


def test_sweep_command_runs_each_config_and_compares(workdir: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(f"name: sw\nbase_model: {workdir / 'distilbert'}\ndata: {{path: {workdir / 'synthetic.csv'}}}\n"
                    "max_length: 32\nbatch_size: 16\nmax_steps: 12\neval_steps: 6\nnum_threads: 1\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: base.yaml\ngrid:\n  learning_rate: [1.0e-3, 2.0e-3]\n")
    result = CliRunner().invoke(app, ["sweep", str(grid), "--run-root", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    rows = read_runs(tmp_path / "runs" / "experiments.csv")
    assert [r["learning_rate"] for r in rows] == ["0.001", "0.002"]
    assert "best test macro recall first" in result.output


def test_cli_rejects_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: {path: x.csv}\nbatchsize: 8\n")
    result = CliRunner().invoke(app, ["train", str(cfg), "--run-root", str(tmp_path)])
    assert result.exit_code == 2 and "batchsize: unknown key" in result.output


def test_cli_bad_data_names_the_row(tmp_path: Path, workdir: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\nfine,neutral\nhm,excellent\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"base_model: {workdir / 'distilbert'}\ndata: {{path: {data}}}\n")
    result = CliRunner().invoke(app, ["train", str(cfg), "--run-root", str(tmp_path)])
    assert result.exit_code == 2 and "'excellent' (1 rows, first at d.csv line 3)" in result.output


@pytest.mark.parametrize("command", ["train", "sweep", "evaluate", "calibrate", "experiments"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output


def test_layerwise_lr_groups_decay_from_head_to_embeddings(workdir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(workdir / "bert")  # 3 layers
    decayed = {n for n, _ in model.named_parameters() if "bias" not in n and "LayerNorm" not in n}
    groups = layerwise_param_groups(model, 1e-3, 0.5, 0.01, decayed)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every parameter in exactly one group
    expected = {"classifier.": 1e-3, "bert.pooler.": 1e-3, "bert.encoder.layer.2.": 5e-4,
                "bert.encoder.layer.0.": 1.25e-4, "bert.embeddings.": 6.25e-5}
    for name, param in named.items():
        lr = next(v for prefix, v in expected.items() if name.startswith(prefix)) if any(
            name.startswith(p) for p in expected) else None
        if lr is not None:
            assert lr_of[id(param)] == pytest.approx(lr), name
        assert wd_of[id(param)] == (0.01 if name in decayed else 0.0), name


def test_layer_lr_decay_and_label_smoothing_reach_the_optimizer(workdir: Path) -> None:
    """A steep decay leaves the embeddings almost where they were while the plain run moves them."""
    before = load_file(workdir / "bert" / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"

    def embedding_shift(**extra) -> float:
        cfg = tiny_config(workdir, base_model=str(workdir / "bert"), max_steps=20, eval_steps=10, **extra)
        result = run_experiment(cfg, workdir / f"llrd-{len(extra)}")
        after = load_file(result.model_dir / "model.safetensors")
        return (after[key] - before[key]).abs().sum().item()

    plain = embedding_shift()
    steep = embedding_shift(layer_lr_decay=0.05, label_smoothing=0.1)
    assert steep < plain / 20
    smoothed = tiny_config(workdir, label_smoothing=0.1)
    assert build_training_args(smoothed, workdir / "args", "cpu").label_smoothing_factor == 0.1


def test_tracker_rewrites_an_older_header_before_appending(tmp_path: Path) -> None:
    """A CSV from before a column existed keeps its rows, each value under its own column."""
    from training.tracker import COLUMNS, append_row

    old_columns = [c for c in COLUMNS if c not in ("pooling", "clean")]
    path = tmp_path / "experiments.csv"
    path.write_text(",".join(old_columns) + "\n" + ",".join(
        {"run_id": "old", "seed": "7", "test_macro_recall": "0.5"}.get(c, "") for c in old_columns) + "\n")
    append_row(path, {"run_id": "new", "pooling": "mean", "seed": 8, "test_macro_recall": 0.75})
    rows = read_runs(path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [(r["run_id"], r["seed"], r["pooling"], r["test_macro_recall"]) for r in rows] == [
        ("old", "7", "", "0.5"), ("new", "8", "mean", "0.75")]


def test_teacher_probabilities_average_the_teachers(trained, workdir: Path) -> None:
    texts = ["great love excellent", "terrible hate awful", "the okay a this"]
    alone = torch.softmax(Predictor(trained.model_dir).predict_logits(texts) / 2.0, dim=-1).numpy()
    other = run_experiment(tiny_config(workdir, seed=7, epochs=2), workdir / "teacher-b")
    other_probs = torch.softmax(Predictor(other.model_dir).predict_logits(texts) / 2.0, dim=-1).numpy()
    fp32 = ModelSettings(device="cpu", quantize="none")  # the serving default (onnx-int8) differs by ~1e-4
    both = teacher_probabilities([trained.run_dir, other.model_dir], texts, temperature=2.0, model=fp32)
    assert both == pytest.approx((alone + other_probs) / 2, abs=1e-5)
    assert both.sum(axis=1) == pytest.approx([1.0] * 3, abs=1e-5)


def test_distilled_student_follows_its_teacher_over_the_gold_labels(workdir: Path) -> None:
    """A teacher that swaps negative and positive: with weight 1 the student learns the swap, not the data."""
    swapped = {"negative": "positive", "neutral": "neutral", "positive": "negative"}
    teacher = run_experiment(tiny_config(workdir, data={"path": str(workdir / "synthetic.csv"), "label_map": swapped,
                                                        "split": {"validation": 0.1, "test": 0.2}}),
                             workdir / "swapped-teacher")
    assert teacher.test["accuracy"] > 0.6  # it learned the swapped labels
    student = run_experiment(tiny_config(workdir, distill={"teachers": [str(teacher.run_dir)], "weight": 1.0}),
                             workdir / "student")
    assert (student.run_dir / "teacher_probs.npy").is_file()
    texts = ["great love excellent", "terrible hate awful"]
    teacher_says = Predictor(teacher.model_dir).predict_logits(texts).argmax(-1).tolist()
    student_says = Predictor(student.model_dir).predict_logits(texts).argmax(-1).tolist()
    assert teacher_says == [0, 2] and student_says == teacher_says  # negative for "great", positive for "terrible"
    assert student.test["accuracy"] < 0.5  # scored against the true labels it never followed


def test_distill_config_names_a_missing_teacher(workdir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-teacher"):
        run_experiment(tiny_config(workdir, distill={"teachers": [str(workdir / "no-such-teacher")]}),
                       workdir / "bad-teacher")


def test_run_fits_a_temperature_and_reports_ece_before_and_after(trained) -> None:
    info = json.loads((trained.model_dir / "training_run.json").read_text())
    cal = info["calibration"]
    assert cal["temperature"] > 0 and cal["ece_bins"] == 15 and set(cal["scores"]) == {"validation", "test"}
    assert Predictor(trained.model_dir, device="cpu", threads=1).temperature == cal["temperature"]
    assert trained.validation["temperature"] == cal["temperature"]
    for split in (trained.validation, trained.test):
        assert 0 <= split["ece_before"] <= 1 and 0 <= split["ece_after"] <= 1
    assert trained.validation["nll_after"] <= trained.validation["nll_before"]  # T minimises validation NLL
    assert (trained.run_dir / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((trained.run_dir / "calibration.json").read_text()) == cal
    row = next(r for r in read_runs(trained.run_dir.parent / "experiments.csv") if r["run_id"] == trained.run_id)
    assert float(row["temperature"]) == pytest.approx(cal["temperature"], rel=1e-5)
    assert float(row["test_ece_after"]) == pytest.approx(trained.test["ece_after"], rel=1e-5)


def test_calibrate_command_refits_an_existing_run_in_place(trained, tmp_path: Path, workdir: Path) -> None:
    import shutil

    run = Path(shutil.copytree(trained.run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints")))
    record = run / "model" / "training_run.json"
    info = json.loads(record.read_text())
    del info["calibration"]  # a model trained before calibration existed
    record.write_text(json.dumps(info))
    (run / "reliability.png").unlink()
    assert Predictor(run / "model", device="cpu", threads=1).temperature == 1.0
    held_out = workdir / "held_out.csv"
    held_out.write_text("\n".join((workdir / "synthetic.csv").read_text().splitlines()[:41]) + "\n")
    result = CliRunner().invoke(app, ["calibrate", str(run), "--test", str(held_out)])
    assert result.exit_code == 0, result.output
    assert "ECE before" in result.output and "validation" in result.output and "held_out.csv" in result.output
    cal = json.loads(record.read_text())["calibration"]
    assert cal["scores"]["test"]["rows"] == 40 and cal["data"]["test"] == str(held_out)
    assert json.loads(record.read_text())["run_id"] == trained.run_id  # the rest of the record kept
    assert (run / "reliability.png").is_file() and not list((run / "model").glob(".*.tmp"))
    # The validation split is rebuilt exactly as training built it: the same logits, so the same T.
    assert cal["temperature"] == pytest.approx(trained.validation["temperature"], rel=0.02)
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nothing-here")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
