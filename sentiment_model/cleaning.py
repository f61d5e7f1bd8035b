"""Text cleaning: the same opt-in rules on every training split, in ``evaluate`` and in serving.

A model's ``training_run.json`` records the cleaning it was trained with (``config.data.clean``); the
predictor applies it before tokenising, so serving sees text as training did.
"""

from __future__ import annotations

import html
import re

from pydantic import BaseModel, ConfigDict, Field

_URL = re.compile(r"(https?://\S+|www\.\S+)", re.IGNORECASE)
_MENTION = re.compile(r"(?<!\w)@\w+")
_SPACE = re.compile(r"\s+")
_ESCAPED_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)
_ESCAPED = re.compile(r"\\u([0-9a-f]{4})", re.IGNORECASE)
_QUOTE_RUN = re.compile(r'"{2,}')


class CleaningConfig(BaseModel):
    """Optional text cleaning, applied identically to every split (and by ``evaluate``)."""

    model_config = ConfigDict(extra="forbid")

    unescape: bool = Field(
        False,
        description="undo export artifacts: HTML entities (&amp;), literal \\uXXXX escapes, CSV-doubled quotes "
        "and stray quotes wrapping the whole text",
    )
    urls: bool = Field(False, description="replace http(s)/www links with the token 'http'")
    mentions: bool = Field(False, description="replace @handles with '@user' (TweetEval's convention)")
    whitespace: bool = Field(True, description="collapse runs of whitespace and strip the ends")
    lowercase: bool = Field(False, description="lower-case (uncased tokenizers do this anyway)")


def _decode_pair(m: re.Match[str]) -> str:
    high, low = int(m.group(1), 16), int(m.group(2), 16)
    return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))


def _decode_one(m: re.Match[str]) -> str:
    code = int(m.group(1), 16)
    return m.group(0) if 0xD800 <= code < 0xE000 else chr(code)  # a lone surrogate stays as it was


def unescape_text(text: str) -> str:
    r"""Undo what exports do to text: ``&amp;``, a literal ``\u2019``, ``\"`` or ``""``, ``"whole text"``.

    TweetEval's train and validation tweets carry all four (11% have ``\\u002c`` for a comma, 20% are
    wrapped in quotes) and its test tweets none, so a model learns on characters it never sees again.
    """
    text = html.unescape(text)
    text = _ESCAPED_PAIR.sub(_decode_pair, text)
    text = _ESCAPED.sub(_decode_one, text)
    text = _QUOTE_RUN.sub('"', text.replace('\\"', '"')).strip()
    if len(text) > 1 and text[0] == text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1]  # quotes around everything
    elif text.count('"') % 2 == 1 and (text[:1] == '"' or text[-1:] == '"'):
        text = text[1:] if text[0] == '"' else text[:-1]  # a lone quote left at either end
    return text


def clean_text(text: str, cfg: CleaningConfig) -> str:
    """Cleaning is opt-in per rule so train and inference can apply exactly the same steps."""
    if cfg.unescape:
        text = unescape_text(text)
    if cfg.urls:
        text = _URL.sub("http", text)
    if cfg.mentions:
        text = _MENTION.sub("@user", text)
    if cfg.whitespace:
        text = _SPACE.sub(" ", text).strip()
    if cfg.lowercase:
        text = text.lower()
    return text
