"""Checks and layout for the read commands `sentiment trends` and `sentiment reviews`.

A wrong window, label or source is the user's error (one line, exit 2, what to type instead) or a hint, never a
silent empty table; the reviews table fits the terminal, the text getting the room.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.text import Text

from sentiment_app.terminal_text import PlainTable as Table
from sentiment_app.terminal_text import clean
from sentiment_model.errors import UserError
from sentiment_model.labels import LABELS
from stream.settings import Settings


def trend_window(settings: Settings, minutes: int | None, hours: int | None) -> tuple[str, int]:
    """(resolution, buckets) for `trends`: at least 1, at most what Redis keeps (the buckets' TTL)."""
    from storage.trends import HOUR, MINUTE

    if minutes is not None and hours is not None:
        raise UserError("give --minutes or --hours, not both")
    resolution, n, ttl_s, unit = ((HOUR, hours, settings.redis.hour_ttl_s, "hour") if hours is not None
                                  else (MINUTE, 15 if minutes is None else minutes, settings.redis.minute_ttl_s,
                                        "minute"))
    most = ttl_s // (3600 if resolution == HOUR else 60)
    if not 1 <= n <= most:
        raise UserError(f"--{unit}s {n}: give 1 to {most} (Redis keeps per-{unit} counters {ttl_s // 3600} hours; "
                        f"SENTIMENT_REDIS__{unit.upper()}_TTL_S)")
    return resolution, n


def unknown_source_hint(source: str, known: list[str], window: str) -> str:
    """The line `trends` prints instead of a table of zeros for a source with no reviews in the window."""
    seen = ", ".join(repr(s) for s in known) if known else "none"
    return f"no reviews from source {source!r} in the last {window} (sources seen then: {seen})"


def check_label(label: str | None) -> str | None:
    """``--label`` normalised, or a UserError listing the labels."""
    if label is None:
        return None
    if label.strip().lower() not in LABELS:
        raise UserError(f"--label {label!r}: use one of {', '.join(LABELS)}")
    return label.strip().lower()


def reviews_table(rows: list[dict[str, Any]], width: int) -> Group:
    """Latest reviews at ``width`` columns, the text getting the room: a source or model shared by every row is
    named once above the table instead of in a column, a correction column only when one exists. Below 120
    columns: no vertical rules, a short time, the score beside the label, no model column (a wider terminal
    shows it); review ids stay whole (`feedback` takes them)."""
    wide = width >= 120
    shared = {name: values.pop() for name, key in (("source", "source"), ("model", "model_version"))
              if len(values := {r[key] for r in rows}) == 1}
    title = "latest labelled reviews" + (" (" + ", ".join(f"{k} {v}" for k, v in shared.items()) + ")"
                                         if shared else "")
    cols: list[tuple[str, Any]] = [("review_id", lambda r: r["review_id"])]
    if wide:
        cols.append(("created (UTC)", lambda r: r["created_at"].strftime("%Y-%m-%d %H:%M")))
    else:
        cols.append(("created", lambda r: r["created_at"].strftime("%m-%d %H:%M")))
    if "source" not in shared:
        cols.append(("source", lambda r: r["source"]))
    if wide:
        cols += [("label", lambda r: r["label"]), ("score", lambda r: f"{r['score']:.2f}")]
    else:
        cols.append(("label", lambda r: f"{r['label']} {r['score']:.2f}"))
    if wide and "model" not in shared:
        cols.append(("model", lambda r: r["model_version"]))
    if any(r["corrected_label"] for r in rows):
        cols.append(("corrected", lambda r: r["corrected_label"] or ""))
    table = Table() if wide else Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for name, _ in cols:
        cut = not wide and name == "source"  # a long source name is cut on a narrow terminal
        table.add_column(name, no_wrap=cut, overflow="ellipsis" if cut else "fold", max_width=12 if cut else None)
    table.add_column("text", overflow="fold")
    for r in rows:
        table.add_row(*(get(r) for _, get in cols), r["text"][:300 if wide else 200])
    return Group(Text(clean(title), overflow="fold"), table)  # a line, not a title: a long model name wraps
