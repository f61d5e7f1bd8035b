"""The ONNX Runtime CPU path: the model exported once to ONNX, its weights int8, run by an ``InferenceSession``.

Why: on the CPU, ONNX Runtime's int8 kernels (VNNI on AVX-512) plus its graph optimisations run the forward
pass faster than torch's dynamic int8 at the same macro-F1 (README "Performance", bench/results/cpu_paths.md).
Weights are quantised per output channel to int8 (``QInt8``): per-tensor scales lost more labels, and uint8
weights ran at about half the speed on this CPU. Activations are quantised on the fly per batch, as in torch.

The exported graph is a cache derived from the artifact, never written into the model's directory (a registered
model may be shared or read-only): it lives under ``cache_dir`` (``SENTIMENT_MODEL__CACHE_DIR``, default
``~/.cache/sentiment-stream/onnx``) named by a digest of the artifact's config and weights, the recipe and the
library versions, so a retrained model or a new torch never reuses a stale graph. Each file is built in a
private temporary folder and renamed into place, so two workers starting together never read half a file.

Only ``input_ids`` and ``attention_mask`` are inputs: a single-segment classifier's ``token_type_ids`` are all
zero, which is the models' own default. ``onnxruntime`` is imported only when this path is chosen.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

RECIPE = 1  # bump when the export or quantisation below changes: older cache entries are then never read
INPUTS = ("input_ids", "attention_mask")
WEIGHT_FILES = (".safetensors", ".bin")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sentiment-stream" / "onnx"


def cache_key(model_dir: Path, int8: bool) -> str:
    """Digest of what the graph is derived from: config and weights (by content), recipe, library versions."""
    import onnxruntime
    import transformers

    h = hashlib.sha256(f"recipe {RECIPE} int8 {int8} torch {torch.__version__} transformers "
                       f"{transformers.__version__} onnxruntime {onnxruntime.__version__}".encode())
    for f in sorted(Path(model_dir).iterdir()):
        if f.name == "config.json" or f.suffix in WEIGHT_FILES:
            with f.open("rb") as handle:
                h.update(f.name.encode() + hashlib.file_digest(handle, "sha256").digest())
    return h.hexdigest()[:32]


class _Logits(nn.Module):
    """The classifier as a function of (input_ids, attention_mask) -> logits, the graph's one output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _sample(vocab_size: int, batch: int, width: int) -> dict[str, torch.Tensor]:
    """Token ids with right padding of different lengths per row, so no mask branch is traced away."""
    ids = torch.arange(batch * width).reshape(batch, width) % max(vocab_size - 1, 1) + 1
    mask = (torch.arange(width) < torch.linspace(width, width // 3, batch).long()[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def export(model: nn.Module, out: Path) -> None:
    """Export to ONNX (batch and sequence dynamic), then check it against torch on another shape."""
    import onnxruntime

    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")  # plain matmul/softmax: no data-dependent SDPA branch gets traced
    try:
        vocab = model.get_input_embeddings().num_embeddings
        sample = _sample(vocab, 2, 16)
        dynamic = {name: {0: "batch", 1: "tokens"} for name in INPUTS} | {"logits": {0: "batch"}}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; the check below is what counts
            torch.onnx.export(_Logits(model).eval(), (sample["input_ids"], sample["attention_mask"]), str(out),
                              input_names=list(INPUTS), output_names=["logits"], dynamic_axes=dynamic,
                              opset_version=17, dynamo=False)
        check = _sample(vocab, 3, 24)
        with torch.no_grad():
            want = model(**check).logits.float().numpy()
    finally:
        model.set_attn_implementation(impl)
    got = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["logits"], {k: v.numpy() for k, v in check.items()})[0]
    if not abs(got - want).max() <= 1e-3:
        raise RuntimeError(f"the exported graph disagrees with torch (max |diff| {abs(got - want).max():.3g})")


def build(model: nn.Module, out: Path, int8: bool, work: Path) -> None:
    """Write the graph to ``out``: fp32 as exported, or with int8 per-channel weights (``quantize_dynamic``)."""
    if not int8:
        export(model, out)
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = work / "fp32.onnx"
    export(model, fp32)
    root, quiet = logging.getLogger(), _QuantizerChatter()
    root.addFilter(quiet)  # the quantiser logs every tensor it skips on the root logger
    try:
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(quiet)


class _QuantizerChatter(logging.Filter):
    """Drops onnxruntime's own below-error records logged straight on the root logger (not other modules')."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}onnxruntime{os.sep}" not in record.pathname


def cached_graph(model: nn.Module, model_dir: Path, int8: bool, cache_dir: Path | None) -> tuple[Path, bool]:
    """The graph's path in the cache, built now if missing; (path, whether it was built now)."""
    final = (cache_dir or default_cache_dir()) / f"{cache_key(model_dir, int8)}-{'int8' if int8 else 'fp32'}.onnx"
    if final.is_file():
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".building-") as work:
        tmp = Path(work) / final.name
        build(model, tmp, int8, Path(work))
        os.replace(tmp, final)  # atomic: another process sees no file or the whole file
    return final, True


class OnnxForward:
    """Logits of one padded chunk (``Predictor._padded``'s dict) from an ONNX Runtime session."""

    def __init__(self, graph: Path | bytes, threads: int, int8: bool) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(graph if isinstance(graph, bytes) else str(graph), opts,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.path = (f"cpu onnxruntime {onnxruntime.__version__} "
                     f"{'int8 (per-channel int8 weights, dynamic activations)' if int8 else 'fp32'}")

    def __call__(self, enc: dict[str, Any]) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {k: enc[k].numpy() for k in self.inputs})[0])


def onnx_forward(model: nn.Module, model_dir: Path, *, int8: bool, threads: int,
                 cache_dir: Path | None = None) -> OnnxForward:
    """The session for ``model`` (loaded from ``model_dir``): from the cache, exported there first if missing.

    A cache folder that cannot be written still serves: the graph is then built in a temporary folder for
    this process only (logged)."""
    try:
        graph, built = cached_graph(model, model_dir, int8, cache_dir)
    except OSError as err:
        log.warning("ONNX cache %s not writable (%s): exporting for this process only",
                    cache_dir or default_cache_dir(), err)
        with tempfile.TemporaryDirectory(prefix="sentiment-onnx-") as work:
            out = Path(work) / "model.onnx"
            build(model, out, int8, Path(work))
            return OnnxForward(out.read_bytes(), threads, int8)
    log.info("ONNX graph %s %s", graph, "exported now" if built else "from the cache")
    return OnnxForward(graph, threads, int8)


def onnx_or_none(model: nn.Module, model_dir: Path, *, int8: bool, threads: int,
                 cache_dir: Path | None = None) -> OnnxForward | None:
    """``onnx_forward``, or None (one warning) when onnxruntime is missing or the export fails: torch serves."""
    try:
        return onnx_forward(model, model_dir, int8=int8, threads=threads, cache_dir=cache_dir)
    except Exception as err:  # any failure here only costs speed: torch serves
        log.warning("ONNX Runtime path unavailable (%s: %s); serving with torch %s instead",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "", "int8" if int8 else "fp32")
        return None
