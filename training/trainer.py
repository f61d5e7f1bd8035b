"""The pieces ``run_experiment`` hands to Hugging Face's ``Trainer``: the encoded splits, the loss (class
weights, label smoothing, distillation), layer-wise learning rates, and the callbacks (metrics log, top-k
checkpoints)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, SequentialSampler
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback

from sentiment_model.long_text import LongTextConfig, encode, special_counts
from training.config import DistillConfig
from training.data import Split
from training.modeling import layerwise_param_groups


class EncodedSplit(Dataset):
    """Texts tokenised once up front (no padding: ``DataCollatorWithPadding`` pads each batch), a text over
    ``max_length`` cut as serving cuts it (``sentiment_model.long_text``; ``windows``: its first window, one row
    per label)."""

    def __init__(self, split: Split, tokenizer: PreTrainedTokenizerBase, max_length: int,
                 soft_targets: np.ndarray | None = None, long_text: LongTextConfig | None = None) -> None:
        enc, _ = encode(tokenizer, split.texts, max_length, long_text or LongTextConfig(), special_counts(tokenizer),
                        one=True)
        self.items = [
            {**{k: enc[k][i] for k in enc}, "labels": split.labels[i]} for i in range(len(split))
        ]
        if soft_targets is not None:  # teachers' probabilities, row i for text i
            for item, soft in zip(self.items, soft_targets.tolist(), strict=True):
                item["teacher_probs"] = soft

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class SentimentTrainer(Trainer):
    """``Trainer`` with class weights in the loss, layer-wise LR decay and a count of training samples seen."""

    def __init__(self, *args: Any, class_weights: torch.Tensor | None = None, layer_lr_decay: float = 1.0,
                 distill: DistillConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        self.layer_lr_decay = layer_lr_decay
        self.distill = distill
        self.samples_seen = 0
        self.sequential_eval = False  # set by _predict: rows in the order given

    def _get_eval_sampler(self, eval_dataset):  # noqa: D102
        if self.sequential_eval:
            return SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)

    def create_optimizer(self, model=None):  # noqa: D102
        if self.layer_lr_decay == 1.0 or self.optimizer is not None:
            return super().create_optimizer(model)
        model = model or self.model
        groups = layerwise_param_groups(model, self.args.learning_rate, self.layer_lr_decay,
                                        self.args.weight_decay, set(self.get_decay_parameter_names(model)))
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        soft = inputs.pop("teacher_probs", None)  # training batches only: validation has no teachers
        if model.training:
            self.samples_seen += int(inputs["labels"].shape[0])
        if self.class_weights is None and soft is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits.float()
        per_item = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.args.label_smoothing_factor)
        if self.class_weights is None:
            loss = per_item.mean()
        else:
            weights = self.class_weights.to(logits.device)[labels]
            loss = (per_item * weights).sum() / weights.sum()
        if soft is not None and self.distill is not None:
            t, w = self.distill.temperature, self.distill.weight
            kd = F.kl_div(F.log_softmax(logits / t, dim=-1), soft.to(logits.device), reduction="batchmean") * t * t
            loss = (1 - w) * loss + w * kd
        if model.training and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # Trainer only divides by the accumulation steps itself in the other case.
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss


class MetricsLogCallback(TrainerCallback):
    """Appends every log entry (train loss, each evaluation) to ``metrics.jsonl`` as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class TopKCheckpoints(TrainerCallback):
    """Keep the k best checkpoints by the selection metric (plus the latest, for resuming, until the end).

    ``Trainer``'s ``save_total_limit`` keeps the most *recent* k (plus the best); the issue asks for the top k.
    """

    def __init__(self, k: int, metric: str, greater_is_better: bool) -> None:
        self.k, self.key, self.greater = k, f"eval_{metric}", greater_is_better

    def ranked(self, output_dir: Path, history: list[dict[str, Any]]) -> list[Path]:
        score = {h["step"]: h[self.key] for h in history if self.key in h}
        ckpts = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        with_score = [p for p in ckpts if int(p.name.split("-")[-1]) in score]

        def order(p: Path) -> tuple[float, int]:
            s = score[int(p.name.split("-")[-1])]
            return (-s if self.greater else s, int(p.name.split("-")[-1]))

        return sorted(with_score, key=order)

    def prune(self, output_dir: Path, history: list[dict[str, Any]], keep_latest: bool) -> None:
        keep = set(self.ranked(output_dir, history)[: self.k])
        ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        if keep_latest and ckpts:
            keep.add(ckpts[-1])
        for path in ckpts:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def on_save(self, args, state, control, **kwargs):
        self.prune(Path(args.output_dir), state.log_history, keep_latest=True)
