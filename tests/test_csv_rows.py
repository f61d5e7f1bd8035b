"""The streaming CSV reader users' files go through (`produce`, `classify --csv`, the dashboard): whatever the
bytes, it never raises while reading; every record is a Row with the header's width or a BadRow with a reason."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentiment_model.errors import UserError
from stream.csv_rows import BadRow, CsvRows, NotUtf8Error, Row, check_utf8, read_header

# Fields a user's CSV may hold: any text csv.writer can quote (commas, quotes, line breaks included); no NUL
# (csv.writer refuses nothing, but an editor would not write one), no lone surrogates (not encodable).
FIELD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


def write_csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode("utf-8")


def records(data: bytes) -> tuple[list[str], list[Row | BadRow]]:
    rows = CsvRows(io.BytesIO(data), "in.csv")
    return rows.header, list(rows)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_reader(data: bytes) -> None:
    try:
        header, got = records(data)
    except UserError as e:  # no usable header: one line naming the file
        assert "in.csv" in str(e) and "\n" not in str(e)
        return
    for r in got:
        assert isinstance(r, Row | BadRow)
        if isinstance(r, Row):
            assert len(r.fields) == len(header)
        else:
            assert r.reason in {"wrong_field_count", "invalid_utf8", "csv_error"} and r.line >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 4), data=st.data())
def test_every_written_row_comes_back_unchanged_or_counted_bad(width: int, data: st.DataObject) -> None:
    header = [f"c{i}" for i in range(width)]
    good = data.draw(st.lists(st.lists(FIELD, min_size=width, max_size=width), max_size=12))
    # bad rows: an unquoted comma (one field too many), bytes that are not UTF-8
    kinds = data.draw(st.lists(st.sampled_from(["extra_field", "latin1"]), max_size=4))
    chunks = [write_csv([header])]
    expected_rows, expected_bad = [], []
    for i, row in enumerate(good):
        chunks.append(write_csv([row]))
        expected_rows.append(row)
        if i < len(kinds):
            chunks.append(b"x," * width + b"x\r\n" if kinds[i] == "extra_field" else
                          ("caf\xe9," * width).encode("latin-1")[:-1] + b"\r\n")
            expected_bad.append("wrong_field_count" if kinds[i] == "extra_field" else "invalid_utf8")
    got_header, got = records(b"".join(chunks))
    assert got_header == header
    assert [r.fields for r in got if isinstance(r, Row)] == expected_rows
    assert [r.reason for r in got if isinstance(r, BadRow)] == expected_bad


def test_bad_rows_name_their_line_and_reading_goes_on() -> None:
    data = (b'id,text\n1,fine\n2,an unquoted, comma\n3,"a quoted\nline break"\n4,caf\xe9\n\n5,last\n')
    header, got = records(data)
    assert header == ["id", "text"]
    assert [(type(r).__name__, r.line) for r in got] == [("Row", 2), ("BadRow", 3), ("Row", 4), ("BadRow", 6),
                                                         ("Row", 8)]
    assert got[1].reason == "wrong_field_count" and "3 fields, the header has 2" in got[1].detail
    assert got[3].reason == "invalid_utf8" and "0xe9" in got[3].detail
    assert got[2].fields == ["3", "a quoted\nline break"]


def test_a_field_over_the_size_limit_is_one_bad_row() -> None:
    huge = b"x" * (csv.field_size_limit() + 10)
    header, got = records(b"id,text\n1," + huge + b"\n2,after\n")
    assert [r.reason for r in got if isinstance(r, BadRow)] == ["csv_error"]
    assert [r.fields for r in got if isinstance(r, Row)] == [["2", "after"]]


def test_a_file_that_is_not_utf8_is_refused_with_offset_line_and_iconv(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("id,text\n1,fine\n2,très bien\n".encode("latin-1"))
    with pytest.raises(NotUtf8Error) as e:
        check_utf8(path)
    message = str(e.value)
    assert f"{path}: byte 0xe8 at byte offset 19 (line 3) is not UTF-8" in message
    assert "iconv -f latin1 -t utf-8" in message and "\n" not in message
    with pytest.raises(NotUtf8Error, match="line 1"):
        read_header("t\xe9xt\n1\n".encode("latin-1"))


def test_header_of_a_file_or_an_upload(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text,\"a, b\"\n1,x,y\n")  # Excel's byte-order mark is dropped
    assert read_header(path) == ["id", "text", "a, b"]
    assert read_header(path.read_bytes()) == ["id", "text", "a, b"]
    with pytest.raises(UserError, match="is empty"):
        read_header(b"\n\n")
