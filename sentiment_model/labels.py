"""The three classes, their order, and the one rule that maps a checkpoint's outputs onto them."""

from __future__ import annotations

from collections.abc import Mapping

from sentiment_model.errors import UserError

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
LABEL_TO_ID: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# Label names a checkpoint may carry, mapped to ours (ids beat names only when names are generic).
_ALIASES = {
    "negative": "negative", "neg": "negative", "bad": "negative", "-1": "negative",
    "neutral": "neutral", "neu": "neutral", "0": "neutral",
    "positive": "positive", "pos": "positive", "good": "positive", "1": "positive",
}


def label_order(id2label: Mapping[int | str, str]) -> list[str]:
    """Our label for each output of the model, from its config's id2label."""
    by_id = {int(k): v for k, v in id2label.items()}
    names = [str(by_id[i]).lower() for i in range(len(by_id))]
    if len(names) != 3:
        raise UserError(f"the model has {len(names)} outputs; a 3-class sentiment model is needed")
    if all(n.startswith("label_") for n in names):  # untitled heads: assume the TweetEval order
        return list(LABELS)
    mapped = [_ALIASES.get(n) for n in names]
    if None in mapped or len(set(mapped)) != 3:
        raise UserError(f"cannot map the model's labels {names} to {list(LABELS)}; set id2label in config.json")
    return mapped  # type: ignore[return-value]


def label_columns(id2label: Mapping[int | str, str]) -> list[int]:
    """The model's output column for each of our labels, in ``LABELS`` order."""
    order = label_order(id2label)
    return [order.index(name) for name in LABELS]
