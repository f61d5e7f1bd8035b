"""Texts longer than the window: the pure cuts (``sentiment_model.long_text``), the predictor reading them as the
model's artifact says, and training tokenising a long text exactly as serving does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sentiment_model.artifact import RUN_INFO_FILE, RunInfo, write_run_info
from sentiment_model.labels import LABELS
from sentiment_model.long_text import (
    LongTextConfig,
    average_per_text,
    head_tail,
    views,
    window_starts,
    windows,
)
from sentiment_model.predictor import Predictor
from training.config import config_from_dict
from training.data import Split
from training.tiny import build_tiny_model, tiny_vocab
from training.trainer import EncodedSplit

CLS, SEP = -1, -2
configs = st.builds(
    LongTextConfig,
    strategy=st.sampled_from(["head", "head_tail", "windows"]),
    head=st.floats(0, 1),
    overlap=st.floats(0, 0.95),
    max_windows=st.integers(1, 64),
    average=st.sampled_from(["logits", "probs"]),
)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 3000), max_length=st.integers(8, 512), cfg=configs, one=st.booleans())
def test_views_fit_the_window_and_keep_the_special_tokens(n: int, max_length: int, cfg: LongTextConfig,
                                                          one: bool) -> None:
    ids = [CLS, *range(n), SEP]
    rows = views(ids, max_length, cfg, (1, 1), one)
    assert rows and all(len(r) <= max_length and r[0] == CLS and r[-1] == SEP for r in rows)
    assert all(CLS not in r[1:-1] and SEP not in r[1:-1] for r in rows)
    if len(ids) <= max_length:
        assert rows == [ids]  # a text that fits is read whole, whatever the strategy
    else:
        assert all(len(r) == max_length for r in rows)  # a long text uses the whole window
        assert len(rows) == 1 or (cfg.strategy == "windows" and not one)
        assert len(rows) <= cfg.max_windows
        if cfg.strategy == "head" or (one and cfg.strategy == "windows"):
            assert rows == [ids[:max_length - 1] + [SEP]]  # what a tokenizer's truncation gives


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 3000), budget=st.integers(1, 510), head=st.floats(0, 1))
def test_head_tail_keeps_the_first_and_last_tokens(n: int, budget: int, head: float) -> None:
    ids = list(range(n))
    cut = head_tail(ids, budget, head)
    if n <= budget:
        assert cut == ids  # a short text is the text itself
        return
    k = round(budget * head)
    assert len(cut) == budget and cut[:k] == ids[:k] and cut[k:] == ids[n - (budget - k):]
    assert cut == sorted(set(cut))  # order kept, nothing repeated


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 3000), budget=st.integers(1, 510), overlap=st.floats(0, 0.95), cap=st.integers(1, 64))
def test_windows_cover_every_token_unless_capped(n: int, budget: int, overlap: float, cap: int) -> None:
    ids = list(range(n))
    uncapped = window_starts(n, budget, overlap, 10**9)
    parts = windows(ids, budget, overlap, cap)
    assert 1 <= len(parts) <= cap and all(len(p) == min(n, budget) for p in parts)
    assert all(p == ids[p[0]:p[0] + len(p)] for p in parts if p)  # contiguous slices
    if n:
        assert parts[0][0] == 0  # the first tokens always read, and the last ones from two windows on
        assert parts[-1][-1] == n - 1 or (cap == 1 and parts == [ids[:budget]])
    if len(uncapped) <= cap:
        assert {t for p in parts for t in p} == set(ids)
        stride = budget - round(budget * overlap)
        assert all(b - a <= max(1, stride) for a, b in zip(uncapped, uncapped[1:], strict=False))


def test_average_per_text_means_logits_or_probabilities() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [3.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.5]])
    owner = [0, 0, 1, 2]
    mean = average_per_text(logits, owner, 3, "logits")
    assert torch.allclose(mean[0], logits[:2].mean(0)) and torch.equal(mean[1:], logits[2:])
    probs = average_per_text(logits, owner, 3, "probs").softmax(-1)
    assert torch.allclose(probs[0], logits[:2].softmax(-1).mean(0), atol=1e-6)
    assert torch.allclose(probs[1:], logits[2:].softmax(-1), atol=1e-6)


# A tiny BERT whose weights are drawn wide (std 0.3): its logits depend clearly on which tokens it reads, so a
# test can tell one cut from another. Every word of WORDS is one token: n words = n tokens + [CLS]/[SEP].
WORDS = [w for w in tiny_vocab()[5:] if len(w) > 1 and not w.startswith("##")]
MAX = 16
BUDGET = MAX - 2
LONG = [WORDS[i % len(WORDS)] for i in range(60)]  # 60 tokens: far over the window


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForSequenceClassification

    path = build_tiny_model(tmp_path_factory.mktemp("sharp-model"), "bert")
    torch.manual_seed(0)
    net = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        for weight in net.parameters():
            if weight.dim() > 1:
                weight.normal_(0, 0.3)
    net.save_pretrained(path)
    return path


def _predictor(model: Path, cfg: LongTextConfig | None = None) -> Predictor:
    return Predictor(model, device="cpu", batch_size=4, max_length=MAX, threads=1, version="t", long_text=cfg)


def _text(words: list[str]) -> str:
    return " ".join(words)


def _far(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_short_texts_read_as_before_under_every_strategy(model: Path) -> None:
    texts = ["love it", "", "the service was great and the staff very friendly", _text(LONG[:BUDGET])]
    p = _predictor(model, LongTextConfig(strategy="head"))
    enc = p.tokenizer(texts, padding=True, truncation=True, max_length=MAX, return_tensors="pt")
    with torch.inference_mode():
        before = p.model(**enc).logits[:, p.columns]  # the predictor's reading before long_text existed
    assert [len(ids) for ids in p._token_ids(texts)] == [4, 2, 11, MAX]
    for strategy in ("head", "head_tail", "windows"):
        p.long_text = LongTextConfig(strategy=strategy)
        assert torch.allclose(p.predict_logits(texts), before, atol=1e-5), strategy
        assert p._token_ids(texts) == p.tokenizer(texts, truncation=True, max_length=MAX)["input_ids"]


def test_head_tail_reads_the_tail_and_head_does_not(model: Path) -> None:
    cfg = LongTextConfig(strategy="head_tail", head=0.25)
    k = round(BUDGET * 0.25)
    good, bad = LONG + ["great"] * 4, LONG + ["awful"] * 4
    p = _predictor(model, cfg)
    out = p.predict_logits([_text(good), _text(bad)])
    seen = p.predict_logits([_text(good[:k] + good[-(BUDGET - k):]), _text(bad[:k] + bad[-(BUDGET - k):])])
    assert torch.equal(out, seen)  # exactly the first k and the last BUDGET - k tokens are read
    assert _far(out[0], out[1]) > 0.05  # so the ending decides
    p.long_text = LongTextConfig(strategy="head")
    head = p.predict_logits([_text(good), _text(bad)])
    assert torch.equal(head[0], head[1])  # head only: the ending is never seen
    assert torch.equal(head, p.predict_logits([_text(good[:BUDGET]), _text(bad[:BUDGET])]))


def test_windows_average_the_windows_logits(model: Path) -> None:
    cfg = LongTextConfig(strategy="windows", overlap=0.25, max_windows=8)
    starts = window_starts(len(LONG), BUDGET, cfg.overlap, cfg.max_windows)
    assert starts == [0, 10, 20, 30, 40, 46]  # stride 14 - round(3.5) = 10; the last window ends the text
    p = _predictor(model, cfg)
    texts = ["love it", _text(LONG), "awful box"]
    out = p.predict_logits(texts)
    p.long_text = LongTextConfig(strategy="head")
    each = p.predict_logits([_text(LONG[s:s + BUDGET]) for s in starts])
    short = p.predict_logits(["love it", "awful box"])
    assert _far(out[1], each.mean(0)) < 1e-4 < _far(each.mean(0), each[0]) / 100  # the mean, not one window
    assert _far(out[[0, 2]], short) < 1e-4
    p.long_text = cfg.model_copy(update={"average": "probs"})
    probs = p.predict_probs(texts)
    assert _far(probs[1], each.softmax(-1).mean(0)) < 1e-5
    p.long_text = cfg
    huge = _text(LONG * 50)  # 3,000 tokens: read as max_windows windows spread evenly, no more rows
    spread = window_starts(3000, BUDGET, cfg.overlap, cfg.max_windows)
    assert len(spread) == 8 and spread[-1] == 3000 - BUDGET
    ids = LONG * 50
    p_head = _predictor(model, LongTextConfig(strategy="head"))
    expected = p_head.predict_logits([_text(ids[s:s + BUDGET]) for s in spread]).mean(0)
    assert _far(p.predict_logits([huge])[0], expected) < 1e-4


def test_the_strategy_is_read_from_the_artifact(model: Path, tmp_path: Path) -> None:
    assert _predictor(model).long_text == LongTextConfig()  # no training_run.json: the documented default
    recorded_model = Path(shutil.copytree(model, tmp_path / "model"))
    recorded = {"strategy": "windows", "overlap": 0.5, "max_windows": 3, "head": 0.25, "average": "probs"}
    (recorded_model / RUN_INFO_FILE).write_text(json.dumps({"run_id": "r", "config": {"long_text": recorded}}))
    p = _predictor(recorded_model)
    assert p.long_text == LongTextConfig(**recorded)
    explicit = _predictor(model, LongTextConfig(**recorded))
    head = _predictor(model, LongTextConfig(strategy="head"))
    text = [_text(LONG + ["great"] * 10)]
    assert torch.equal(p.predict_logits(text), explicit.predict_logits(text))
    assert _far(p.predict_logits(text), head.predict_logits(text)) > 0.05


def test_training_records_the_strategy_and_tokenises_as_serving_does(model: Path, tmp_path: Path) -> None:
    cfg = config_from_dict({"data": {"path": "x.csv"}, "max_length": MAX,
                            "long_text": {"strategy": "head_tail", "head": 0.5}})
    write_run_info(tmp_path, {"run_id": "r", "config": cfg.model_dump(mode="json")})  # as run_experiment does
    assert RunInfo.read(tmp_path).long_text == cfg.long_text
    assert config_from_dict({"data": {"path": "x.csv"}}).long_text == LongTextConfig()
    texts = [_text(LONG), "love it", _text(LONG[::-1] + ["great"])]
    for long_text in (cfg.long_text, LongTextConfig(strategy="head"), LongTextConfig(strategy="windows")):
        p = _predictor(model, long_text)
        trained = EncodedSplit(Split(texts, [0, 1, 2]), p.tokenizer, MAX, long_text=long_text).items
        served = p._token_ids(texts)  # windows: training reads the first window, which serving reads too
        assert [item["input_ids"] for item in trained] == served
        assert all(item["attention_mask"] == [1] * len(item["input_ids"]) for item in trained)


def test_a_config_with_an_unknown_strategy_fails_by_name() -> None:
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="long_text.strategy"):
        config_from_dict({"data": {"path": "x.csv"}, "long_text": {"strategy": "middle"}})


def test_evaluate_scores_texts_over_the_window_apart(model: Path, tmp_path: Path) -> None:
    from sentiment_model.settings import ModelSettings
    from training.evaluate import DataSpec, evaluate_model

    rows = [("love it", "positive"), ("awful box", "negative"), ("okay", "neutral"),
            (_text(LONG + ["great"]), "positive"), (_text(LONG[::-1]), "negative")]
    data = tmp_path / "mixed.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    serving = ModelSettings(device="cpu", max_length=MAX, threads=1)
    result = evaluate_model(model, DataSpec(str(data)), model=serving)
    assert result["long_text"]["strategy"] == "head_tail"
    assert result["by_window"]["over_window"]["rows"] == 2 and result["by_window"]["within_window"]["rows"] == 3
    p = _predictor(model)
    preds = p.predict_logits([t for t, _ in rows]).argmax(-1).tolist()
    labels = [LABELS.index(y) for _, y in rows]
    assert result["by_window"]["over_window"]["accuracy"] == sum(a == b for a, b in zip(preds[3:], labels[3:],
                                                                                       strict=True)) / 2

    from typer.testing import CliRunner

    from sentiment_app.cli import app

    env = {"SENTIMENT_MODEL__MAX_LENGTH": str(MAX), "SENTIMENT_MODEL__DEVICE": "cpu",
           "SENTIMENT_MODEL__QUANTIZE": "none", "SENTIMENT_MODEL__THREADS": "1"}
    shown = CliRunner().invoke(app, ["evaluate", str(model), str(data)], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"over the {MAX}-token window (head_tail): 2 rows" in " ".join(shown.output.split())


@pytest.mark.parametrize("strategy", ["head_tail", "windows"])
def test_the_per_chunk_path_reads_long_texts_alike(model: Path, strategy: str) -> None:
    """The GPU path and tokenizers that cannot pad themselves go through ``_encode``: the same rows, the same logits."""
    p = _predictor(model, LongTextConfig(strategy=strategy))
    texts = ["love it", _text(LONG), _text(LONG * 3 + ["awful"]), "", _text(LONG[:BUDGET + 1])]
    one_call = p.predict_logits(texts)
    rule = Predictor.__dict__["_pads_itself"]
    Predictor._pads_itself = False
    try:
        per_chunk = p.predict_logits(texts)
    finally:
        Predictor._pads_itself = rule
    assert _far(one_call, per_chunk) < 1e-5
