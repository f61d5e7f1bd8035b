"""Terminal-safe text (``sentiment_app.terminal_text``): whatever a review, source or author holds, a CLI table
prints it literally, on one line, without a control character reaching the terminal."""

from __future__ import annotations

import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from sentiment_app.terminal_text import PlainConsole, PlainTable, cell, clean, markdown_literal, markup_safe

# What must never reach the terminal from data: C0 (but the console's own line feeds), DEL, C1,
# line/paragraph separators and bidirectional overrides.
FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = ["[/bold]", "[/]", "[red]", "[link=http://evil]x[/link]", "\\", "\\[b]", "\x1b[2J", "\x1b[31m",
           "\x1b]0;owned\x07", "\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\", "\x1b]", "\x1bP", "\x9b1m", "\x9d",
           "\x00", "\x07", "\x08", "\r", "\n", "\t", "\x85", "\u2028", "\u202e", "\x7f", ":smile:", "é", "表"]
texts = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=12)), max_size=8).map("".join)


def render(*renderables: object, width: int = 400) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    console.print(*renderables)
    return console.file.getvalue()


@settings(max_examples=300, deadline=None)
@given(texts)
def test_clean_leaves_no_control_character(text: str) -> None:
    cleaned = clean(text)
    assert not FORBIDDEN.search(cleaned) and "\n" not in cleaned and "\x1b" not in cleaned
    assert clean(cleaned) == cleaned  # idempotent: cleaning stored text again changes nothing


@settings(max_examples=300, deadline=None)
@given(texts, texts, texts)
def test_any_text_in_a_table_renders_without_raising_or_control_characters(title: str, header: str,
                                                                           text: str) -> None:
    table = PlainTable(title=title)
    table.add_column(header)
    table.add_column("n", justify="right")
    table.add_row(text, "1")
    table.add_row(None, text)
    out = render(table)
    assert not FORBIDDEN.search(out), repr(out)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_any_text_in_a_markup_line_renders_without_raising_or_control_characters(text: str) -> None:
    out = render(f"[red]error:[/red] {markup_safe(text)} [bold]done[/bold]")
    assert not FORBIDDEN.search(out), repr(out)
    assert out.rstrip("\n").endswith(" done")  # the data's brackets closed none of the line's own tags


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=40))
def test_printable_text_is_shown_exactly(text: str) -> None:
    table = PlainTable()
    table.add_column("text", no_wrap=True)
    table.add_row(text)
    assert text in render(table)


def test_markup_and_escape_sequences_are_literal_or_gone() -> None:
    assert clean("[/bold] ok") == "[/bold] ok"
    assert clean("\x1b[31mred\x1b[0m") == "red"
    assert clean("\x1b]8;;http://evil\x07click\x1b]8;;\x07") == "click"  # a forged link loses its target
    assert clean("\x1b]0;title") == "0;title"  # unterminated: only the introducer goes
    assert clean("one\ntwo\r\nthree\tfour") == "one two three four"
    assert clean("a\x00b\x7fc\x9b2Jd\u202eE") == "abcdE"
    assert cell("[/x]").plain == "[/x]" and clean(42) == "42"
    out = render(PlainTable("[/bold]", title="source [/x]"))
    assert "[/bold]" in out and "source [/x]" in out


@settings(max_examples=300, deadline=None)
@given(texts)
def test_plain_console_lines_carry_no_control_character_or_markup(text: str) -> None:
    console = PlainConsole(file=io.StringIO(), width=400, color_system=None, legacy_windows=False)
    console.print(f"promoted {text}.")
    out = console.file.getvalue()
    assert not FORBIDDEN.search(out) and out == clean(f"promoted {text}.") + "\n"


@settings(max_examples=300, deadline=None)
@given(texts)
def test_markdown_literal_escapes_every_ascii_punctuation_mark(text: str) -> None:
    md = markdown_literal(text)
    assert not FORBIDDEN.search(md)
    assert re.fullmatch(r"(?:\\[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~])*", md)  # no mark without its backslash
    assert re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", md) == clean(text)  # and it reads as the text itself
