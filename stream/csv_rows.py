"""A streaming, forgiving CSV reader for files users hand us (`produce`, `classify --csv`, the dashboard).

It reads bytes, one physical line at a time, so memory stays flat in the file's length (a field is bounded
by ``csv.field_size_limit``, 128 KiB, far above ``worker.max_text_chars``). A record it cannot use is not
an exception but a ``BadRow`` with its line number and a reason: a field count other than the header's (an
unquoted comma or quote), bytes that are not UTF-8, a field over the size limit. Only a file without a
usable header is refused (``UserError``). ``check_utf8`` refuses a file that is not UTF-8 before anything
is sent or labelled, naming the byte offset and line and how to re-encode it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sentiment_model.errors import UserError

BOM = b"\xef\xbb\xbf"  # Excel writes one; dropped from the first line


class NotUtf8Error(UserError):
    """The file holds bytes that are not UTF-8; the message names where and how to re-encode."""


@dataclass(frozen=True)
class Row:
    line: int  # the record's first physical line (the header is line 1)
    fields: list[str]


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str  # wrong_field_count | invalid_utf8 | csv_error
    detail: str


@dataclass(frozen=True)
class Undecodable:
    line: int
    offset: int  # of the first byte that is not UTF-8, from the start of the file
    byte: int


class TextLines:
    """Physical lines of a binary file as text (for ``csv.reader`` and JSON Lines); remembers the first
    undecodable byte read since ``undecodable`` was last cleared (surrogate escapes stand in for those bytes)."""

    def __init__(self, f: Iterable[bytes]) -> None:
        self.f = f
        self.offset = 0
        self.line = 0
        self.undecodable: Undecodable | None = None

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            start, self.line = self.offset, self.line + 1
            self.offset += len(raw)
            if self.line == 1 and raw.startswith(BOM):
                raw, start = raw[len(BOM):], start + len(BOM)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if self.undecodable is None:
                    self.undecodable = Undecodable(self.line, start + e.start, raw[e.start])
                yield raw.decode("utf-8", "surrogateescape")


class CsvRows:
    """The header of a CSV (read at once) and an iterator over its records as ``Row`` or ``BadRow``.

    Blank lines are not records. Never raises while iterating, whatever the bytes.
    """

    def __init__(self, f: BinaryIO | Iterable[bytes], name: str, dialect: str = "excel") -> None:
        self.name = name
        self._undecodable_seen: Undecodable | None = None
        self._lines = TextLines(f)
        self._reader = csv.reader(iter(self._lines), dialect=dialect)
        first = next(self._records(), None)
        if first is None:
            raise UserError(f"{name} is empty: the first line must be a header naming the columns")
        if isinstance(first, BadRow):
            if first.reason == "invalid_utf8":
                raise NotUtf8Error(not_utf8_message(name, self._undecodable_seen))
            raise UserError(f"{name}: cannot read the header (line {first.line}): {first.detail}")
        self.header = first.fields

    def __iter__(self) -> Iterator[Row | BadRow]:
        width = len(self.header)
        for record in self._records():
            if isinstance(record, Row) and len(record.fields) != width:
                yield BadRow(record.line, "wrong_field_count",
                             f"{len(record.fields)} fields, the header has {width} (an unquoted comma or quote?)")
            else:
                yield record

    def column(self, name: str, option: str) -> int:
        """The index of column ``name``; a ``UserError`` listing the header otherwise."""
        if name in self.header:
            return self.header.index(name)
        raise UserError(f"{self.name} has no column {name!r}; its columns are {', '.join(map(repr, self.header))}:"
                        f" pick one with {option}")

    def _records(self) -> Iterator[Row | BadRow]:
        while True:
            start = self._reader.line_num + 1
            self._lines.undecodable = None
            try:
                fields = next(self._reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield BadRow(start, "csv_error", str(e))
                continue
            if self._lines.undecodable is not None:
                u = self._undecodable_seen = self._lines.undecodable
                yield BadRow(start, "invalid_utf8", f"byte 0x{u.byte:02x} at byte offset {u.offset} is not UTF-8")
            elif fields:
                yield Row(start, fields)


def not_utf8_message(name: str, u: Undecodable | None) -> str:
    where = f"byte 0x{u.byte:02x} at byte offset {u.offset} (line {u.line}) is not UTF-8" if u else "not UTF-8"
    p = Path(name)
    return (f"{name}: {where}; re-encode the file, e.g. "
            f"iconv -f latin1 -t utf-8 {name} > {p.with_name(p.stem + '.utf8' + p.suffix)}")


def check_utf8(path: Path) -> None:
    """Refuse (``NotUtf8Error``) a file with any byte that is not UTF-8, before any of it is used."""
    with path.open("rb") as f:
        lines = TextLines(f)
        for _ in lines:
            if lines.undecodable is not None:
                raise NotUtf8Error(not_utf8_message(str(path), lines.undecodable))


@contextmanager
def open_csv(path: Path, dialect: str = "excel") -> Iterator[CsvRows]:
    with path.open("rb") as f:
        yield CsvRows(f, str(path), dialect)


def read_header(source: Path | bytes, name: str | None = None) -> list[str]:
    """The column names of a CSV file or upload, reading only its first record."""
    if isinstance(source, bytes):
        return CsvRows(io.BytesIO(source), name or "the upload").header
    with open_csv(source) as rows:
        return rows.header
