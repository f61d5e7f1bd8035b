"""Text from users and producers, made safe to print on a terminal.

Review texts, sources, authors, notes and dead-letter values reach the CLI's tables. Rich reads a plain
string as markup, so one review containing ``[/bold]`` used to make ``sentiment reviews`` fail for
everyone while it was among the latest, and an escape sequence in a text reached the terminal raw (it
can recolour, retitle or clear the screen, or forge a link). Here such text becomes literal, single-line
and free of control characters before Rich sees it.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# Escape sequences go whole, so that their parameters do not stay behind as text: CSI (ESC [ or the C1
# CSI), string sequences with their terminator (OSC links and titles, DCS, SOS, PM, APC), and any other
# ESC sequence. An unterminated string loses only its introducer (the last alternative).
_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
# Line and paragraph breaks and tabs become one space: a table cell stays on its row.
_BREAKS = re.compile("\r\n|[\t\n\v\f\r\x85\u2028\u2029]")
# What is left of C0, DEL and C1, and the bidirectional overrides that reorder what a reader sees.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# ASCII punctuation, each of which a backslash makes literal in CommonMark.
_MARKDOWN = re.compile(r"([!-/:-@\[-`{-~])")


def clean(value: Any) -> str:
    """``value`` as one line of printable text: escape sequences and control characters removed."""
    text = value if isinstance(value, str) else str(value)
    return _CONTROLS.sub("", _BREAKS.sub(" ", _SEQUENCES.sub("", text)))


def cell(value: Any) -> Text:
    """A table cell (or title) that Rich prints as it is: never read as markup, no control characters."""
    return Text(clean(value))


def markup_safe(value: Any) -> str:
    """``value`` for an f-string that Rich reads as markup (``console.print(f"... {markup_safe(x)}")``)."""
    return escape(clean(value))


def markdown_literal(value: Any) -> str:
    """``value`` for a Markdown message (Streamlit's ``st.success`` and kin): ``clean``, and every ASCII
    punctuation mark backslash-escaped, which CommonMark shows as the mark itself, so no text becomes a link,
    an image the viewer's browser fetches, a colour directive, a formula or code."""
    return _MARKDOWN.sub(r"\\\1", clean(value))


class PlainTable(Table):
    """A Rich table whose string cells, headers and title are shown literally (``cell``).

    Use it for every table that shows data: one rule at the table, instead of one per value, so no cell
    can be forgotten. Other renderables (Text, nested tables) pass through unchanged.
    """

    def __init__(self, *headers: Any, title: Any = None, caption: Any = None, **kwargs: Any) -> None:
        # string headers reach add_column below; Column objects keep their own header
        super().__init__(*headers, title=_plain(title), caption=_plain(caption), **kwargs)

    def add_column(self, header: Any = "", footer: Any = "", **kwargs: Any) -> None:
        super().add_column(_plain(header), _plain(footer), **kwargs)

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(_plain(r) for r in renderables), **kwargs)


class PlainConsole(Console):
    """A console for lines that name data (version names, paths): each string printed is ``clean``, never read
    as markup or :emoji: codes (Rich itself passes escape sequences through); other renderables are unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"markup": False, "emoji": False, **kwargs})

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(clean(o) if isinstance(o, str) else o for o in objects), **kwargs)


def _plain(value: Any) -> Any:
    return cell(value) if isinstance(value, str) else value
