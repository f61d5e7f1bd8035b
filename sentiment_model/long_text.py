"""How a text longer than the model's window is read: the same rule in training and in serving.

A model reads ``max_length`` tokens, its special tokens ([CLS] ... [SEP]) included. A longer text is read as

- ``head``: its first tokens only (what a tokenizer's truncation does);
- ``head_tail``: the first ``head`` share of the budget and the last tokens for the rest (a review's verdict
  often sits at its end);
- ``windows``: windows over the whole text, overlapping by ``overlap`` of a window, whose logits are averaged
  per text. At most ``max_windows`` windows per text (spread evenly from the first tokens to the last when a
  text needs more), so one huge review costs at most that many rows of a batch.

The rule belongs to the model: training records it in ``training_run.json`` (``config.long_text``) and the
predictor reads it from there (``RunInfo.long_text``). The default, ``head_tail`` with half the budget from
the start, was chosen by measurement on constructed long texts (bench/results/training/long_texts.md): over all of them
it beat head-only and windows for both models measured (windows lead only where sentiment fills the whole
text, and by less), at one model row per text (windows read ~5).
Training reads a long text as serving does (``windows``: its first window, one row per label). The functions
work on any sequence (token ids, attention masks): a cut depends only on the length, so every per-token list of
one text is cut alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # torch only where logits are averaged: `sentiment status` and `init` read configs, no tensors
    import torch

T = TypeVar("T")
Strategy = Literal["head", "head_tail", "windows"]


class LongTextConfig(BaseModel):
    """How a text over the window is read (see the module docstring); a model trained without it uses these defaults."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Field("head_tail", description="head | head_tail | windows (see sentiment_model.long_text)")
    head: float = Field(0.5, ge=0, le=1, description="head_tail: share of the token budget kept from the start")
    overlap: float = Field(0.25, ge=0, lt=1, description="windows: share of a window shared with the next one")
    max_windows: int = Field(8, ge=1, le=64, description="windows: most windows read per text")
    average: Literal["logits", "probs"] = Field(
        "logits", description="windows: mean of the windows' logits, or of their probabilities")


def head_tail(ids: Sequence[T], budget: int, head: float) -> list[T]:
    """``ids`` (no special tokens) cut to ``budget``: the first ``round(budget * head)``, then the last ones."""
    if len(ids) <= budget:
        return list(ids)
    k = min(budget, max(0, round(budget * head)))
    return list(ids[:k]) + list(ids[len(ids) - (budget - k):])


def window_starts(n: int, budget: int, overlap: float, max_windows: int) -> list[int]:
    """Where each window of ``budget`` tokens starts in a text of ``n``: every token is covered while at most
    ``max_windows`` windows are needed; beyond that, ``max_windows`` windows spread evenly, first and last kept."""
    if n <= budget:
        return [0]
    stride = max(1, budget - round(budget * overlap))
    starts = [*range(0, n - budget, stride), n - budget]
    if len(starts) <= max_windows:
        return starts
    if max_windows == 1:
        return [0]
    return [round(i * (n - budget) / (max_windows - 1)) for i in range(max_windows)]


def windows(ids: Sequence[T], budget: int, overlap: float, max_windows: int) -> list[list[T]]:
    """``ids`` (no special tokens) as windows of at most ``budget`` tokens (see ``window_starts``)."""
    return [list(ids[s:s + budget]) for s in window_starts(len(ids), budget, overlap, max_windows)]


def views(ids: Sequence[T], max_length: int, cfg: LongTextConfig, specials: tuple[int, int] = (1, 1),
          one: bool = False) -> list[list[T]]:
    """The rows the model reads for one encoded text (``specials``: how many special tokens it starts and ends
    with): the text itself when it fits, else its cut (or windows) with the same special tokens around.

    ``one``: a single row even for ``windows`` (its first window): what training reads, one row per label.
    """
    if len(ids) <= max_length:
        return [list(ids)]
    pre, post = specials
    budget = max_length - pre - post
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text beside {pre + post} special tokens")
    start, body, end = list(ids[:pre]), ids[pre:len(ids) - post], list(ids[len(ids) - post:])
    if cfg.strategy == "head" or (one and cfg.strategy == "windows"):
        parts = [list(body[:budget])]
    elif cfg.strategy == "head_tail":
        parts = [head_tail(body, budget, cfg.head)]
    else:
        parts = windows(body, budget, cfg.overlap, cfg.max_windows)
    return [start + p + end for p in parts]


def special_counts(tokenizer: Any) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after one text (BERT: [CLS] ... [SEP] -> (1, 1))."""
    probe = "a"
    full = tokenizer(probe)["input_ids"]
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return i, len(full) - i - len(bare)
    return 0, len(full) - len(bare)


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, cfg: LongTextConfig,
           specials: tuple[int, int], one: bool = False, **kwargs: Any) -> tuple[dict[str, list[list[int]]], list[int]]:
    """Tokenise ``texts`` in one call, without truncation, then read each as ``views`` does (``cut``).

    Returns every per-token list the tokenizer gave (input ids, masks), one row per view, and the text each row
    belongs to.
    """
    if not texts:
        return {"input_ids": []}, []
    enc = tokenizer(list(texts), truncation=False, verbose=False, **kwargs)
    return cut({k: enc[k] for k in enc if isinstance(enc[k], list)}, max_length, cfg, specials, one)


def cut(enc: dict[str, list[list[int]]], max_length: int, cfg: LongTextConfig, specials: tuple[int, int],
        one: bool = False) -> tuple[dict[str, list[list[int]]], list[int]]:
    """Whole encodings (one row per text, ``input_ids`` and any masks) as the rows the model reads (``views``),
    with the text each row belongs to. A text that fits is untouched."""
    n = len(enc["input_ids"])
    if not n or max(map(len, enc["input_ids"])) <= max_length:  # the usual case: every text fits, nothing to cut
        return enc, list(range(n))
    rows: dict[str, list[list[int]]] = {k: [] for k in enc}
    owner: list[int] = []
    for i, ids in enumerate(enc["input_ids"]):
        if len(ids) <= max_length:
            for k in enc:
                rows[k].append(enc[k][i])
            owner.append(i)
            continue
        views_n = 0
        for k in enc:
            part = views(enc[k][i], max_length, cfg, specials, one)
            rows[k] += part
            views_n = len(part)
        owner += [i] * views_n
    return rows, owner


def average_per_text(logits: torch.Tensor, owner: Sequence[int], n: int, how: str = "logits") -> torch.Tensor:
    """One row per text from one row per window: the mean of its windows' logits, or (``probs``) the log of the
    mean of their probabilities (a valid logit row: its softmax is that mean)."""
    import torch

    index = torch.as_tensor(list(owner), dtype=torch.long)
    counts = torch.zeros(n, dtype=logits.dtype).index_add_(0, index, torch.ones(len(owner), dtype=logits.dtype))
    values = logits if how == "logits" else torch.softmax(logits, dim=-1)
    mean = torch.zeros((n, logits.shape[1]), dtype=logits.dtype).index_add_(0, index, values) / counts[:, None]
    return mean if how == "logits" else torch.log(mean)
