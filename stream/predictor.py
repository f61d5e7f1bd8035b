"""The one predictor: the worker, the batch CLI and the dashboard all label text through it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from storage.schema import LABELS
from stream.settings import Settings

log = logging.getLogger(__name__)

# Label names a checkpoint may carry, mapped to ours (ids beat names only when names are generic).
_ALIASES = {
    "negative": "negative", "neg": "negative", "bad": "negative", "-1": "negative",
    "neutral": "neutral", "neu": "neutral", "0": "neutral",
    "positive": "positive", "pos": "positive", "good": "positive", "1": "positive",
}


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # probability of the chosen label
    probs: dict[str, float]  # negative / neutral / positive


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def label_order(id2label: dict[int, str]) -> list[str]:
    """Our label for each output of the model, from its config's id2label."""
    names = [str(id2label[i]).lower() for i in range(len(id2label))]
    if len(names) != 3:
        raise ValueError(f"the model has {len(names)} outputs; a 3-class sentiment model is needed")
    if all(n.startswith("label_") for n in names):  # untitled heads: assume the TweetEval order
        return list(LABELS)
    mapped = [_ALIASES.get(n) for n in names]
    if None in mapped or len(set(mapped)) != 3:
        raise ValueError(f"cannot map the model's labels {names} to {list(LABELS)}; set id2label in config.json")
    return mapped  # type: ignore[return-value]


def model_version(model_dir: Path) -> str:
    """The version a row records: the training run id if the model came from one, else the dir name."""
    run_file = model_dir / "training_run.json"
    if run_file.exists():
        try:
            run_id = json.loads(run_file.read_text()).get("run_id")
            if run_id:
                return str(run_id)
        except (OSError, ValueError):
            log.warning("unreadable %s; using the directory name as model version", run_file)
    return model_dir.resolve().name


def resolve_model_dir(settings: Settings) -> Path:
    """The configured model, else the one `make demo` / the registry put at ``models_dir/current``."""
    if settings.model.dir is not None:
        return settings.model.dir
    current = settings.models_dir / "current"
    if (current / "config.json").exists():
        return current
    raise FileNotFoundError(
        f"no model configured and none at {current}: run `make demo` (trains a small one), or "
        "`sentiment train configs/baseline.yaml`, or set SENTIMENT_MODEL__DIR to a Hugging Face model dir"
    )


class Predictor:
    """Batched, length-aware inference with dynamic padding.

    Texts are sorted by length before batching so that short reviews are not padded to the longest
    one in the request; results come back in the caller's order.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_length: int = 128,
        batch_size: int = 32,
        threads: int | None = None,
        version: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(
                f"no model at {self.model_dir} (config.json missing): train one with `sentiment train "
                "configs/baseline.yaml`, run `make demo`, or set SENTIMENT_MODEL__DIR"
            )
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.max_length = max_length
        self.batch_size = batch_size
        self.version = version or model_version(self.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir)
        self.model.to(self.device).eval()
        self.labels = label_order(self.model.config.id2label)
        log.info("model %s (%s) on %s, max_length=%d, batch_size=%d, threads=%d", self.version,
                 self.model_dir, self.device, max_length, batch_size, torch.get_num_threads())

    @torch.inference_mode()
    def predict_probs(self, texts: Sequence[str]) -> torch.Tensor:
        """Class probabilities in the model's output order, one row per text, in input order."""
        out = torch.empty((len(texts), len(self.labels)), dtype=torch.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                pad_to_multiple_of=8, return_tensors="pt",  # few distinct shapes: kernel caches stay small
            ).to(self.device)
            logits = self.model(**enc).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu()
        return out

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if not texts:
            return []
        probs = self.predict_probs(texts)
        results = []
        for row in probs.tolist():
            by_label = dict(zip(self.labels, row, strict=True))
            best = max(by_label, key=by_label.__getitem__)
            results.append(Prediction(best, by_label[best], {k: by_label[k] for k in LABELS}))
        return results
