"""The one predictor: every path that labels text goes through it, built the same way (``predictor_from_settings``).

The worker, ``sentiment classify``, the dashboard, ``sentiment evaluate``, distillation's teachers, the
promotion gate and shadow runs all load a model here from its own artifact plus ``ModelSettings``.

Serving paths (chosen by ``ModelSettings``, reported in one log line at start-up):

- CPU: fp32, or int8 dynamic quantisation of every ``nn.Linear`` (``quantize="int8"``: weights int8,
  activations quantised on the fly; 2-3x faster on a few cores, macro-F1 within about a point);
  torch threads = the cores this process may use. The settings' default (``quantize="auto"``) serves
  ``onnx-int8`` instead: the model exported to ONNX with int8 weights, run by ONNX Runtime
  (``sentiment_model.onnx_runtime``; torch int8 serves if that cannot load).
- GPU: autocast in bf16 (fp16 where bf16 is unsupported), larger batches (``cuda_batch_size``), inputs
  tokenised into pinned host memory and copied asynchronously, and the next chunk tokenised on the CPU
  while the GPU runs the current one.

Both: texts sorted by length and padded per chunk only, so short reviews are not padded to long ones,
and the text cleaning the model was trained with (``training_run.json``) applied before tokenising. A text over
``max_length`` tokens is read as the model's ``long_text`` says (``sentiment_model.long_text``: head + tail by
default, or windows whose logits are averaged), the same way training read it.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import itertools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sentiment_model.artifact import RunInfo, model_version, require_model_dir
from sentiment_model.cleaning import clean_text
from sentiment_model.labels import LABELS, label_columns
from sentiment_model.long_text import LongTextConfig, average_per_text, cut, encode, special_counts
from sentiment_model.onnx_runtime import OnnxForward, onnx_or_none
from sentiment_model.settings import ModelSettings


def _without_sklearn_in_transformers() -> None:
    """transformers imports scikit-learn (+170 MB RSS) only for assisted generation, which we never use.

    Tell it scikit-learn is absent before its generation utilities load; a process that imported
    transformers earlier (training, evaluation) is left as it is.
    """
    if "transformers.generation" in sys.modules:
        return
    import transformers.utils as tf_utils
    import transformers.utils.import_utils as tf_import_utils

    tf_utils.is_sklearn_available = tf_import_utils.is_sklearn_available = lambda: False


_without_sklearn_in_transformers()
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

# Registers the `pooling: mean` head with the Auto classes, so such models load like any other.
import sentiment_model.heads  # noqa: E402, F401

log = logging.getLogger(__name__)
DEFAULT_MAX_LENGTH = 128  # for a model with no training record (e.g. one fine-tuned elsewhere)


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # probability of the chosen label
    probs: dict[str, float]  # negative / neutral / positive


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cores_given() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def training_cleaner(info: RunInfo) -> Callable[[str], str] | None:
    """The text cleaning the model was trained with (``training_run.json`` config.data.clean), or None.

    Serving must see text as training did (e.g. @mentions -> @user, links -> http), or accuracy drops.
    """
    cfg = info.cleaning
    return None if cfg is None else (lambda text: clean_text(text, cfg))


def release_memory() -> None:
    """Give a dropped model's memory back to the OS: glibc keeps freed arenas unless asked to trim them."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """No "Loading weights" progress bar on stderr at every model load (classify, workers, hot reloads)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def predictor_from_settings(model: ModelSettings, model_dir: Path, version: str | None = None) -> Predictor:
    """The one way to build a predictor: the model's own artifact plus ``SENTIMENT_MODEL__*`` settings."""
    return Predictor(model_dir, device=model.device, max_length=model.max_length, batch_size=model.batch_size,
                     threads=model.threads, version=version or model.version, quantize=model.quantize,
                     precision=model.precision, cuda_batch_size=model.cuda_batch_size, onnx_cache_dir=model.cache_dir)


class Predictor:
    """Batched, length-aware inference with dynamic padding.

    Texts are sorted by length before batching so that short reviews are not padded to the longest
    one in the request; results come back in the caller's order.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_length: int | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        version: str | None = None,
        quantize: str = "none",
        precision: str = "auto",
        cuda_batch_size: int | None = None,
        long_text: LongTextConfig | None = None,
        onnx_cache_dir: Path | None = None,
    ) -> None:
        self.model_dir = require_model_dir(model_dir, "train one with `sentiment train configs/baseline.yaml`, "
                                           "run `make demo`, or set SENTIMENT_MODEL__DIR")
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or cores_given())
        info = RunInfo.read(self.model_dir)
        # serving reads the window training read, unless told otherwise: one contract for the artifact
        self.max_length = max_length or info.max_length or DEFAULT_MAX_LENGTH
        self.batch_size = (cuda_batch_size or batch_size) if self.device.type == "cuda" else batch_size
        self.version = version or model_version(self.model_dir, info)
        self.clean = training_cleaner(info)
        self.temperature = info.temperature  # fitted on validation; 1 when never calibrated
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.long_text = long_text or info.long_text  # how a text over max_length is read
        self._specials = special_counts(self.tokenizer)
        with _no_loading_bar():
            self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir)
        self.model.to(self.device).eval()
        self.columns = label_columns(self.model.config.id2label)  # the model's output for each of LABELS
        self.amp_dtype: torch.dtype | None = None
        self._onnx: OnnxForward | None = None  # the ONNX Runtime session, when that CPU path serves
        if self.device.type == "cuda":
            if quantize not in ("none", "auto"):
                log.warning("quantize=%s is a CPU path; on the GPU autocast is used instead", quantize)
            if precision in ("auto", "bf16"):
                self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            elif precision == "fp16":
                self.amp_dtype = torch.float16
            self.path = (f"cuda {str(self.amp_dtype).removeprefix('torch.') if self.amp_dtype else 'fp32'} autocast, "
                         "pinned-memory transfers, tokenisation overlapped with the forward pass")
        elif quantize in ("auto", "onnx", "onnx-int8") and (onnx := onnx_or_none(
                self.model, self.model_dir, int8=quantize != "onnx", threads=torch.get_num_threads(),
                cache_dir=onnx_cache_dir)):
            self._onnx, self.path = onnx, onnx.path
            self.model.to_empty(device="meta")  # the session holds the weights: drop torch's copy (config stays)
        elif quantize in ("int8", "auto", "onnx-int8"):  # the ONNX path's fallback keeps its precision
            with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, still works
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
                self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
            self.path = "cpu int8 (dynamic quantisation of the Linear layers)"
        else:
            self.path = "cpu fp32"
        log.info("model %s (%s): serving path %s; batch_size=%d, max_length=%d, length-sorted dynamic padding, "
                 "threads=%d, training cleaning %s, score temperature %.3g, long texts read as %s", self.version,
                 self.model_dir, self.path, self.batch_size, self.max_length, torch.get_num_threads(),
                 "applied" if self.clean else "none", self.temperature, self.long_text.strategy)

    def _forward(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of one padded chunk on the CPU: ONNX Runtime's session when that path serves, else torch."""
        if self._onnx is not None:
            return self._onnx(enc)
        return self.model(**enc).logits.float()

    def _encode(self, texts: Sequence[str] | Sequence[list[int]], idx: list[int]) -> dict[str, torch.Tensor]:
        rows = self._token_ids([texts[i] for i in idx])  # padded to a multiple of 8: few shapes, small kernel caches
        enc = (self._padded(rows, list(range(len(rows)))) if self._pads_itself
               else self.tokenizer.pad({"input_ids": rows}, pad_to_multiple_of=8, return_tensors="pt"))
        if self.device.type == "cuda":  # page-locked host memory: the copy runs async, off the CPU's path
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in enc.items()}
        return dict(enc)

    @cached_property
    def _pads_itself(self) -> bool:
        """Whether the CPU path may tokenise a request in one call and pad per chunk itself (``_padded``)."""
        tok = self.tokenizer
        return (tok.is_fast and tok.padding_side == "right" and tok.pad_token_id is not None
                and set(tok.model_input_names) <= {"input_ids", "attention_mask", "token_type_ids"})

    @cached_property
    def _rust_tokenizer(self) -> Any | None:
        """The fast tokenizer's Rust core, truncation and padding off: its ids without transformers' per-text
        dicts (a tenth of the worker's GIL time in the profile, README "Performance"); ids identical to
        ``tokenizer(texts)``'s (``tests/test_predictor_padding.py``). None for a slow tokenizer or one whose core
        cannot be copied (a custom Python pre-tokenizer): the wrapper serves then."""
        if not self.tokenizer.is_fast:
            return None
        try:
            core = copy.deepcopy(self.tokenizer.backend_tokenizer)  # ours to configure; the wrapper sets its own
        except Exception as err:
            log.info("tokenising through transformers' wrapper: its Rust core cannot be copied (%s)", err)
            return None
        core.no_truncation()
        core.no_padding()
        core.encode_special_tokens = bool(getattr(self.tokenizer, "split_special_tokens", False))  # not copied
        return core

    def _rows(self, texts: Sequence[str], one: bool) -> tuple[list[list[int]], list[int]]:
        """Every text's token ids in one call into the fast tokenizer (a call per chunk costs about twice as
        much per text: the worker's profile, README "Performance"), a text over ``max_length`` read as the
        model's ``long_text`` says (``one``: a single row per text), with the text each row belongs to."""
        core = self._rust_tokenizer
        if core is None:
            rows, owner = encode(self.tokenizer, texts, self.max_length, self.long_text, self._specials, one=one,
                                 return_attention_mask=False, return_token_type_ids=False)
        else:
            batch = getattr(core, "encode_batch_fast", core.encode_batch)  # _fast: no character offsets
            rows, owner = cut({"input_ids": [e.ids for e in batch(list(texts), add_special_tokens=True)]},
                              self.max_length, self.long_text, self._specials, one)
        return rows["input_ids"], owner

    def _token_ids(self, texts: Sequence[str] | Sequence[list[int]]) -> list[list[int]]:
        """One row of token ids per text (``_rows``); rows already tokenised (``windows``) pass as they are."""
        if texts and not isinstance(texts[0], str):
            return list(texts)  # type: ignore[arg-type]
        return self._rows(texts, one=True)[0]  # type: ignore[arg-type]

    def _padded(self, ids: list[list[int]], idx: list[int]) -> dict[str, torch.Tensor]:
        """One chunk as ``_encode`` gives it: right-padded to a multiple of 8, attention mask by length."""
        lengths = np.fromiter((len(ids[i]) for i in idx), dtype=np.int64, count=len(idx))
        width = -(-int(lengths.max()) // 8) * 8
        mask = np.arange(width) < lengths[:, None]
        input_ids = np.full((len(idx), width), self.tokenizer.pad_token_id, dtype=np.int64)
        input_ids[mask] = np.fromiter(itertools.chain.from_iterable(ids[i] for i in idx), dtype=np.int64,
                                      count=int(lengths.sum()))
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}

    @torch.inference_mode()
    def predict_logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Logits, one row per text in input order, columns in ``LABELS`` order.

        A text over ``max_length`` is cut (``_token_ids``) or, for ``windows``, read as windows whose logits
        are averaged back into its row (``sentiment_model.long_text``)."""
        if self.clean is not None:
            texts = [self.clean(t) for t in texts]
        if self.long_text.strategy != "windows":
            return self._logits(texts)
        rows, owner = self._rows(texts, one=False)
        return average_per_text(self._logits(rows), owner, len(texts), self.long_text.average)

    def _logits(self, texts: Sequence[str] | Sequence[list[int]]) -> torch.Tensor:
        """The one inference loop: one row of logits per text (or per row of token ids), in input order."""
        out = torch.empty((len(texts), len(LABELS)), dtype=torch.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if not chunks:
            return out
        if self.device.type != "cuda":
            ids = self._token_ids(texts) if self._pads_itself else None
            for idx in chunks:
                enc = self._padded(ids, idx) if ids is not None else self._encode(texts, idx)
                out[idx] = self._forward(enc)[:, self.columns]
            return out
        autocast = (torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext())
        enc = self._encode(texts, chunks[0])
        for k, idx in enumerate(chunks):
            with autocast:
                logits = self.model(**enc).logits.float()[:, self.columns]
            host = torch.empty(logits.shape, dtype=logits.dtype, pin_memory=True)
            host.copy_(logits, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            if k + 1 < len(chunks):  # the GPU works on chunk k while the CPU tokenises chunk k + 1
                enc = self._encode(texts, chunks[k + 1])
            done.synchronize()
            out[idx] = host
        return out

    def predict_probs(self, texts: Sequence[str]) -> torch.Tensor:
        """Class probabilities, one row per text in input order, columns in ``LABELS`` order.

        Softmax of logits / T, T the model's calibration temperature (``RunInfo.temperature``): the scores
        then mean what they say; the argmax, so every label, is the same as with the raw logits."""
        return torch.softmax(self.predict_logits(texts) / self.temperature, dim=-1)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if not texts:
            return []
        results = []
        for row in self.predict_probs(texts).tolist():
            by_label = dict(zip(LABELS, row, strict=True))
            best = max(by_label, key=by_label.__getitem__)
            results.append(Prediction(best, by_label[best], by_label))
        return results
