"""The CPU predictor tokenises a request in one call and pads each chunk itself (``Predictor._padded``): it must
give exactly what tokenising each chunk with the tokenizer's own padding gives (``Predictor._encode``)."""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentiment_model.predictor import Predictor

HOSTILE = ["", " ", "[PAD] [CLS] [SEP]", "a" * 5000, "héllo 😀 " * 80, "\x00 tab\tnew\nline", "great", "bad " * 200]


_LOADED: dict[tuple[Path, int, int], Predictor] = {}


def _predictor(model: Path, batch_size: int, max_length: int) -> Predictor:
    key = (model, batch_size, max_length)
    if key not in _LOADED:
        _LOADED[key] = Predictor(model, device="cpu", batch_size=batch_size, max_length=max_length, threads=1,
                                 version="t")
    return _LOADED[key]


def _both(p: Predictor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    assert p._pads_itself
    one_call = p.predict_probs(texts)
    rule = Predictor.__dict__["_pads_itself"]
    Predictor._pads_itself = False  # the per-chunk path, as before
    try:
        per_chunk = p.predict_probs(texts)
    finally:
        Predictor._pads_itself = rule
    return one_call, per_chunk


def test_one_call_tokenisation_gives_the_per_chunk_probabilities(tiny_model: Path) -> None:
    p = _predictor(tiny_model, 3, 24)
    texts = HOSTILE + [f"review {i}: " + "good " * (i % 30) for i in range(40)]
    one_call, per_chunk = _both(p, texts)
    assert torch.equal(one_call, per_chunk)
    ids = p._token_ids(texts)
    assert max(map(len, ids)) == 24  # truncated to max_length as before
    enc = p._padded(ids, [0, 3])
    assert enc["input_ids"].shape[1] % 8 == 0 and enc["attention_mask"].sum().item() == len(ids[0]) + len(ids[3])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=300), min_size=1, max_size=12))
def test_any_texts_give_the_same_probabilities_both_ways(tiny_model: Path, texts: list[str]) -> None:
    p = _predictor(tiny_model, 4, 32)
    one_call, per_chunk = _both(p, texts)
    assert torch.equal(one_call, per_chunk)
