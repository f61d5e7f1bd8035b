"""Run one experiment: Hugging Face ``Trainer`` does the loop; this module wires config, data and outputs.

A run directory holds everything needed to judge and reproduce the run (see ``run_experiment``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from sentiment_model.artifact import write_run_info
from sentiment_model.errors import UserError
from sentiment_model.labels import LABELS
from sentiment_model.profile import ReferenceProfile
from training import metrics as M
from training import tracker
from training.calibration import calibrate, save_calibration, softmax
from training.config import ConfigError, ExperimentConfig, dump_config
from training.data import LabelledData, Split, load_dataset
from training.distill import teacher_probabilities
from training.evaluate import domain_scores, over_window
from training.modeling import count_parameters, freeze, load_base
from training.trainer import EncodedSplit, MetricsLogCallback, SentimentTrainer, TopKCheckpoints

CHECKPOINTS = "checkpoints"


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    model_dir: Path
    validation: dict[str, Any]
    test: dict[str, Any]
    timing: dict[str, float]
    best_step: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)  # what went to the experiment tracker


def _device(config: ExperimentConfig) -> str:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA device is available; use device: auto or cpu")
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def _precision(config: ExperimentConfig, device: str) -> dict[str, bool]:
    if config.precision == "auto":
        if device != "cuda":
            return {}
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    if config.precision == "fp16" and device != "cuda":
        raise ConfigError("precision: fp16 needs a GPU; use fp32 or bf16 on CPU")
    return {"fp16": config.precision == "fp16", "bf16": config.precision == "bf16"}


def balanced_weights(labels: list[int], power: float = 1.0) -> torch.Tensor:
    """sklearn's 'balanced' (n / (k * count_c): every class carries the same total weight) raised to ``power``;
    0.5 ('sqrt') only halves the imbalance on a log scale, for when full balancing over-predicts rare classes."""
    counts = np.bincount(np.asarray(labels), minlength=len(LABELS)).astype(float)
    weights = (len(labels) / (len(LABELS) * np.maximum(counts, 1))) ** power
    return torch.tensor(weights, dtype=torch.float32)


def environment(device: str) -> dict[str, Any]:
    import accelerate
    import sklearn
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "scikit_learn": sklearn.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def new_run_id(name: str, run_root: Path) -> str:
    base = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{name}"
    run_id, n = base, 1
    while (run_root / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _soft_targets(config: ExperimentConfig, train: Split, run_dir: Path) -> np.ndarray | None:
    """The teachers' probabilities on the training texts, computed once per run (kept for ``--resume``)."""
    if config.distill is None:
        return None
    cached = run_dir / "teacher_probs.npy"
    if cached.exists():
        return np.load(cached)
    soft = teacher_probabilities(config.distill.teachers, train.texts, config.distill.temperature)
    np.save(cached, soft)
    return soft


def _predict(trainer: SentimentTrainer, dataset: EncodedSplit) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Predicted ids, true ids, seconds, and logits (for calibration and the drift reference), in row order.

    ``Trainer`` batches evaluation rows by length in a shuffled order; a mixture scores each row against its
    source, so rows are predicted shortest first (little padding) and put back in their own order.
    """
    start = time.perf_counter()
    order = np.argsort([len(item["input_ids"]) for item in dataset.items], kind="stable")
    trainer.sequential_eval = True
    try:
        out = trainer.predict(Subset(dataset, order.tolist()), metric_key_prefix="predict")
    finally:
        trainer.sequential_eval = False
    back = np.argsort(order)
    logits, labels = np.asarray(out.predictions, dtype=np.float32)[back], np.asarray(out.label_ids)[back]
    return np.argmax(logits, axis=-1), labels, time.perf_counter() - start, logits


def _compute_metrics(pred) -> dict[str, float]:
    return M.flat_metrics(pred.label_ids, np.argmax(pred.predictions, axis=-1))


def build_training_args(config: ExperimentConfig, output_dir: Path, device: str) -> TrainingArguments:
    greater = config.metric_for_best_model != "loss"
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup,
        lr_scheduler_type=config.scheduler,
        max_grad_norm=config.max_grad_norm,
        label_smoothing_factor=config.label_smoothing,
        num_train_epochs=config.epochs or 1.0,
        max_steps=config.max_steps or -1,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.eval_steps,
        save_total_limit=None,  # TopKCheckpoints prunes by score instead of by age
        load_best_model_at_end=True,
        metric_for_best_model=config.metric_for_best_model,
        greater_is_better=greater,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device == "cpu",
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        report_to=["mlflow"] if _mlflow_wanted(config) else "none",
        run_name=config.name,
        dataloader_num_workers=0,
        remove_unused_columns=config.distill is None,  # else Trainer drops teacher_probs before compute_loss
        **_precision(config, device),
    )


def _mlflow_wanted(config: ExperimentConfig) -> bool:
    if not config.mlflow:
        return False
    try:
        import mlflow  # noqa: F401
    except ImportError:
        print("mlflow: true but mlflow is not installed; `pip install mlflow` to log there. Continuing without.")
        return False
    return True


def run_experiment(
    config: ExperimentConfig,
    run_root: str | Path = "runs",
    *,
    run_id: str | None = None,
    resume: bool = False,
    tracker_csv: str | Path | None = None,
    data: LabelledData | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> RunResult:
    """Fine-tune ``config.base_model`` and write the run directory ``run_root/run_id``.

    Contents: ``config.yaml`` (resolved), ``data.json``, ``metrics.jsonl`` (every log/eval step),
    ``validation_metrics.json`` and ``test_metrics.json`` (best model), ``classification_report.txt``,
    ``confusion_matrix.png``, ``training_curves.png``, ``timing.json``, ``environment.json``,
    ``checkpoints/`` (top-k), and ``model/`` (Hugging Face format + tokenizer + ``training_run.json``).
    ``resume=True`` continues ``run_id`` from its latest checkpoint. One row goes to ``tracker_csv``
    (default ``run_root/experiments.csv``).
    """
    wall_start = time.perf_counter()
    run_root = Path(run_root)
    if resume and not run_id:
        raise UserError("resume needs the run_id of the run to continue")
    run_id = run_id or new_run_id(config.name, run_root)
    run_dir = run_root / run_id
    if run_dir.exists() and not resume:
        raise UserError(f"{run_dir} exists; pick another run id or pass resume=True")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / CHECKPOINTS

    device = _device(config)
    torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
    set_seed(config.seed)  # before the model: the new classifier head is randomly initialised

    data = data or load_dataset(config.data)
    model, tokenizer, resolved = load_base(config.base_model, config.pooling)
    frozen = freeze(model, config.freeze_layers, config.frozen_embeddings) if (
        config.freeze_layers or config.frozen_embeddings) else []
    resolved_cfg = config.model_dump(mode="json") | {"resolved_base_model": resolved}
    (run_dir / "config.yaml").write_text(dump_config(config) + f"# resolved_base_model: {resolved}\n",
                                         encoding="utf-8")
    _write_json(run_dir / "data.json", data.summary())

    teacher_start = time.perf_counter()
    soft_targets = _soft_targets(config, data.train, run_dir)
    teacher_time = time.perf_counter() - teacher_start
    train_ds = EncodedSplit(data.train, tokenizer, config.max_length, soft_targets, config.long_text)
    val_ds = EncodedSplit(data.validation, tokenizer, config.max_length, long_text=config.long_text)
    power = {"balanced": 1.0, "sqrt": 0.5}.get(config.class_weights)
    weights = balanced_weights(data.train.labels, power) if power else None

    cb: list[TrainerCallback] = [
        MetricsLogCallback(run_dir / "metrics.jsonl"),
        TopKCheckpoints(config.save_top_k, config.metric_for_best_model, config.metric_for_best_model != "loss"),
    ]
    if config.early_stopping_patience:
        cb.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
    trainer = SentimentTrainer(
        model=model,
        args=build_training_args(config, ckpt_dir, device),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_compute_metrics,
        callbacks=cb + list(callbacks or []),
        class_weights=weights,
        layer_lr_decay=config.layer_lr_decay,
        distill=config.distill,
    )
    has_ckpt = resume and any(ckpt_dir.glob("checkpoint-*"))
    train_out = trainer.train(resume_from_checkpoint=True if has_ckpt else None)
    history = trainer.state.log_history
    cb[1].prune(ckpt_dir, history, keep_latest=False)  # type: ignore[attr-defined]

    # Score the selected (best-on-validation) model once on validation and once on test.
    val_pred, val_true, _, val_logits = _predict(trainer, val_ds)
    validation = M.classification_metrics(val_true, val_pred)
    test: dict[str, Any] = {}
    test_time = 0.0
    preds = {"validation": val_pred}
    if len(data.test):
        test_ds = EncodedSplit(data.test, tokenizer, config.max_length, long_text=config.long_text)
        test_pred, test_true, test_time, test_logits = _predict(trainer, test_ds)
        preds["test"] = test_pred
        test = M.classification_metrics(test_true, test_pred)
        (run_dir / "classification_report.txt").write_text(M.report_text(test_true, test_pred), encoding="utf-8")
        test["confusion_matrix"] = M.confusion(test_true, test_pred)
        M.plot_confusion(test["confusion_matrix"], run_dir / "confusion_matrix.png",
                         f"{config.name}: test (n={len(data.test)})")
    # Temperature scaling fitted on validation (training.calibration): scores that mean what they say.
    cal_splits = {"validation": (val_logits, val_true)} | ({"test": (test_logits, test_true)} if test else {})
    cal = calibrate(cal_splits)
    validation |= {"temperature": cal.temperature, "calibration_note": cal.note,
                   **{k: v for k, v in cal.scores["validation"].items() if k != "rows"}}
    if test:
        test |= {k: v for k, v in cal.scores["test"].items() if k != "rows"}
    _write_json(run_dir / "validation_metrics.json", validation)
    _write_json(run_dir / "test_metrics.json", test)
    domains = {name: domain_scores(split, preds[name], over_window(split.texts, tokenizer, config.max_length))
               for name, split in data.splits().items() if split.domains and name in preds}
    if domains:  # a mixture: every source scored alone
        _write_json(run_dir / "domain_metrics.json", domains)
    M.plot_curves(history, run_dir / "training_curves.png", f"{config.name} ({run_id})")

    best_step = trainer.state.best_global_step
    model_dir = run_dir / "model"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    for name in ("training_args.bin",):
        (model_dir / name).unlink(missing_ok=True)
    # What the model predicts on data like its training data: the drift monitor's reference.
    ReferenceProfile.from_probabilities(softmax(val_logits, cal.temperature).tolist(), LABELS,
                                        data.train.counts()).write(model_dir)

    eval_time = sum(h.get("eval_runtime", 0.0) for h in history)
    train_runtime = float(train_out.metrics.get("train_runtime", 0.0))
    train_time = max(train_runtime - eval_time, 1e-9)
    samples = trainer.samples_seen
    timing = {
        "train_samples": samples,
        "train_time_s": round(train_time, 2),
        "train_samples_per_s": round(samples / train_time, 2),
        "train_runtime_incl_eval_s": round(train_runtime, 2),
        "eval_time_s": round(eval_time, 2),
        "test_predict_time_s": round(test_time, 2),
        "teacher_time_s": round(teacher_time, 2),
        "test_samples_per_s": round(len(data.test) / test_time, 2) if test_time else None,
        "wall_time_s": round(time.perf_counter() - wall_start, 2),
        "steps": trainer.state.global_step,
        "resumed": bool(has_ckpt),
    }
    _write_json(run_dir / "timing.json", timing)
    env = environment(device) | {"parameters": count_parameters(model), "frozen_parameters": len(frozen)}
    _write_json(run_dir / "environment.json", env)
    run_info = {"run_id": run_id, "config": resolved_cfg, "best_step": best_step,
                "validation_metrics": validation, "test_metrics": test, "timing": timing,
                "labels": list(LABELS), **({"domain_metrics": domains} if domains else {})}
    write_run_info(model_dir, run_info)
    save_calibration(cal, model_dir, run_dir, cal_splits, f"{config.name} ({run_id}): reliability")

    row = {
        "run_id": run_id, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), "name": config.name,
        "base_model": config.base_model, "max_length": config.max_length, "batch_size": config.batch_size,
        "grad_accum": config.gradient_accumulation_steps, "learning_rate": config.learning_rate,
        "scheduler": config.scheduler, "warmup": config.warmup, "epochs": config.epochs,
        "max_steps": config.max_steps, "freeze_layers": config.freeze_layers,
        "class_weights": config.class_weights, "pooling": config.pooling,
        "layer_lr_decay": config.layer_lr_decay, "label_smoothing": config.label_smoothing,
        "clean": "+".join(k for k, on in config.data.clean.model_dump().items() if on),
        "distill": (f"{len(d.teachers)} teachers, weight {d.weight:g}, T {d.temperature:g}"
                    if (d := config.distill) else ""),
        "sources": "+".join(s.name + (f"x{s.weight:g}" if s.weight != 1 else "") for s in config.data.sources or []),
        "seed": config.seed, "train_rows": len(data.train),
        "steps": trainer.state.global_step, "best_step": best_step,
        "val_macro_recall": validation["macro_recall"], "val_macro_f1": validation["macro_f1"],
        "test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
        "test_macro_recall": test.get("macro_recall"), **cal.flat(),
        "train_samples_per_s": timing["train_samples_per_s"],
        "train_time_s": timing["train_time_s"], "wall_time_s": timing["wall_time_s"], "device": device,
        "run_dir": str(run_dir),
    }
    csv_path = Path(tracker_csv) if tracker_csv else run_root / "experiments.csv"
    tracker.append_row(csv_path, row)
    if domains:
        tracker.append_domain_rows(csv_path, {"run_id": run_id, "name": config.name, "seed": config.seed}, domains,
                                   "training run")
    _log_mlflow(config, test, timing)
    return RunResult(run_id, run_dir, model_dir, validation, test, timing, best_step, history, row)


def _log_mlflow(config: ExperimentConfig, test: dict[str, Any], timing: dict[str, Any]) -> None:
    if not _mlflow_wanted(config):
        return
    import mlflow

    scalars = {f"test_{k}": v for k, v in test.items() if isinstance(v, float)}
    scalars |= {k: float(v) for k, v in timing.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    with mlflow.start_run(run_name=f"{config.name}-final", nested=mlflow.active_run() is not None):
        mlflow.log_metrics(scalars)
