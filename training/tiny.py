"""Tiny randomly initialised checkpoints and a learnable synthetic task, for tests and smoke runs.

Nothing can be downloaded from the Hugging Face hub here, so tests build a real (small) DistilBERT or
BERT checkpoint with a WordPiece vocabulary on disk; the training code loads it like any other model.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Literal

from transformers import BertConfig, BertTokenizerFast, DistilBertConfig, DistilBertTokenizerFast

from sentiment_model.labels import LABELS

WORDS = {
    "negative": ["awful", "terrible", "broken", "rude", "slow", "refund", "worst", "hate", "disappointing", "bad"],
    "neutral": ["okay", "average", "arrived", "ordinary", "standard", "usual", "fine", "normal", "plain", "box"],
    "positive": ["great", "excellent", "love", "perfect", "friendly", "fast", "best", "amazing", "happy", "good"],
}
FILLER = ["the", "product", "service", "was", "and", "it", "a", "very", "staff", "delivery", "i", "this", "is"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> list[str]:
    words = sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
    return SPECIAL + words + list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


def build_tiny_model(
    directory: str | Path, arch: Literal["distilbert", "bert"] = "distilbert", n_layers: int = 2, seed: int = 0
) -> Path:
    """Write a randomly initialised 3-class checkpoint plus tokenizer to ``directory``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(tiny_vocab())}  # transformers 5 takes the vocab itself
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    if arch == "distilbert":
        config = DistilBertConfig(vocab_size=len(tiny_vocab()), n_layers=n_layers, dim=32, hidden_dim=64,
                                  n_heads=2, max_position_embeddings=64, **labels)
        tokenizer = DistilBertTokenizerFast(vocab=vocab, do_lower_case=True)
    else:
        config = BertConfig(vocab_size=len(tiny_vocab()), num_hidden_layers=n_layers, hidden_size=32,
                            intermediate_size=64, num_attention_heads=2, max_position_embeddings=64, **labels)
        tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def synthetic_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short sentences whose label is given by the sentiment word they contain (learnable, balanced)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = rng.sample(FILLER, 4) + [rng.choice(WORDS[label])]
        if rng.random() < 0.5:
            words.append(rng.choice(WORDS[label]))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_synthetic_csv(path: str | Path, n: int, seed: int = 0) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(synthetic_rows(n, seed))
    return path
