"""`sentiment classify --csv`: the input is never changed, the output is whole or untouched, input columns are
kept as they are, and every input row is labelled or counted bad (the worker's rules decide what is bad)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sentiment_app.cli import app
from sentiment_app.csv_labelling import added_columns, label_csv
from sentiment_model.errors import UserError
from sentiment_model.predictor import Predictor
from stream.settings import WorkerSettings

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
ADDED = ["sentiment_label", "sentiment_score", "sentiment_p_negative", "sentiment_p_neutral",
         "sentiment_p_positive"]


@pytest.fixture(scope="module")
def predictor(tiny_model: Path) -> Predictor:
    return Predictor(tiny_model, device="cpu", threads=1)


def write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def read(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def folder_listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXT, TEXT), max_size=15), extra=st.lists(st.integers(0, 14), max_size=3),
       gold=st.booleans())
def test_every_row_is_labelled_or_counted_and_input_columns_are_kept(
        predictor: Predictor, tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str]],
        extra: list[int], gold: bool) -> None:
    folder = tmp_path_factory.mktemp("prop")
    header = ["id", "text", "sentiment_label"] if gold else ["id", "text"]  # a gold column with our name
    body = [[f"r{i}", text, label] if gold else [f"r{i}", text] for i, (text, label) in enumerate(rows)]
    lines = [write(folder / "h.csv", [header]).read_bytes()]
    n_extra = 0
    for i, row in enumerate(body):
        lines.append(write(folder / "r.csv", [row]).read_bytes())
        if i in extra:  # an unquoted comma: one field too many
            lines.append(b"x," * len(header) + b"x\r\n")
            n_extra += 1
    src = folder / "in.csv"
    src.write_bytes(b"".join(lines))
    before = src.read_bytes()
    worker = WorkerSettings(max_text_chars=25)
    valid = [r for r in body if r[1].strip() and len(r[1]) <= 25]
    try:
        report = label_csv(predictor, src, folder / "out.csv", chunk=4, worker=worker)
    except UserError as e:  # only when no row could be labelled
        assert not valid and "no row could be labelled" in str(e)
        assert not (folder / "out.csv").exists()
        return
    finally:
        assert src.read_bytes() == before
    out = read(folder / "out.csv")
    assert report.labelled + report.bad_total == len(body) + n_extra
    assert report.labelled == len(valid) and report.bad["wrong_field_count"] == n_extra
    width = len(header)
    added = ["sentiment2_" + c.removeprefix("sentiment_") for c in ADDED] if gold else ADDED
    assert out[0] == header + added
    assert [r[:width] for r in out[1:]] == valid  # input columns unchanged, gold labels included
    assert all(r[width] in {"negative", "neutral", "positive"} for r in out[1:])


def test_out_equal_to_the_input_is_refused_and_the_input_is_unchanged(predictor: Predictor, tmp_path: Path) -> None:
    src = write(tmp_path / "in.csv", [["id", "text"], ["1", "great"], ["2", "bad, really"]])
    before = src.read_bytes()
    (tmp_path / "link.csv").symlink_to(src)
    os.link(src, tmp_path / "hard.csv")
    for out in (src, tmp_path / "." / "in.csv", tmp_path / "link.csv", tmp_path / "hard.csv"):
        with pytest.raises(UserError, match="is the input file"):
            label_csv(predictor, src, out)
        assert src.read_bytes() == before
    result = CliRunner().invoke(app, ["classify", "--csv", str(src), "--out", str(tmp_path / "link.csv")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: --out {tmp_path / 'link.csv'} is the input file: labelling would replace it; give another --out"]
    assert src.read_bytes() == before


def test_a_failure_mid_file_leaves_an_existing_out_untouched(predictor: Predictor, tmp_path: Path) -> None:
    src = write(tmp_path / "in.csv", [["id", "text"], *[[str(i), f"review {i}"] for i in range(50)]])
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    out.chmod(0o640)
    listing = folder_listing(tmp_path)

    def interrupt(done: int) -> None:  # Ctrl-C after the first chunk was written to the temporary file
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_csv(predictor, src, out, chunk=10, on_progress=interrupt)
    assert out.read_text() == "precious\n" and folder_listing(tmp_path) == listing  # no partial file left
    report = label_csv(predictor, src, out, chunk=10)
    assert report.labelled == 50 and len(read(out)) == 51
    assert oct(out.stat().st_mode & 0o777) == oct(0o640)  # the replaced file keeps its mode
    assert folder_listing(tmp_path) == listing


def test_streams_in_chunks_and_reports_progress(predictor: Predictor, tmp_path: Path) -> None:
    src = write(tmp_path / "in.csv", [["id", "body"], *[[str(i), f"review number {i}"] for i in range(1000)],
                                      ["1000", ""]])
    progress: list[int] = []
    report = label_csv(predictor, src, tmp_path / "out.csv", "body", chunk=300, on_progress=progress.append)
    assert progress == [300, 600, 900, 1001]
    assert report.labelled == 1000 and dict(report.bad) == {"validation_error": 1}
    assert report.first_bad[0].line == 1002
    rows = read(tmp_path / "out.csv")
    assert rows[0] == ["id", "body", *ADDED] and rows[6][:2] == ["5", "review number 5"]


def test_added_columns_never_take_an_input_name() -> None:
    assert added_columns(["text", "label", "score"]) == ADDED
    taken = ["text", "sentiment_score", "sentiment2_label"]
    assert added_columns(taken) == ["sentiment3_" + c.removeprefix("sentiment_") for c in ADDED]


def test_classify_csv_cli_reports_bad_rows_and_errors_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"id,text\n1,great phone\n2,an unquoted, comma\n3,\n4,fine\n")
    runner = CliRunner()
    result = runner.invoke(app, ["classify", "--csv", str(src), "--model-dir", str(tiny_model)])
    assert result.exit_code == 0, result.output
    assert f"labelled 2 rows -> {tmp_path / 'in.labelled.csv'}" in result.output
    assert "2 rows not labelled (1 wrong_field_count, 1 validation_error); first at line(s) 3, 4" in result.output
    assert len(read(tmp_path / "in.labelled.csv")) == 3

    def one_line_error(*args: str) -> str:
        """The error line; the only output when the error needs no model (found before it loads)."""
        r = runner.invoke(app, ["classify", *args, "--model-dir", str(tiny_model)])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        lines = r.output.strip().splitlines()
        assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1, r.output
        assert len(lines) == 1 or "no row could be labelled" in lines[-1], r.output
        return lines[-1]

    assert "has no column 'body'; its columns are 'id', 'text': pick one with --text-col" in one_line_error(
        "--csv", str(src), "--text-col", "body")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,text\n1,très bien\n".encode("latin-1"))
    line = one_line_error("--csv", str(latin))
    assert "byte 0xe8 at byte offset 12 (line 2) is not UTF-8" in line and "iconv -f latin1 -t utf-8" in line
    assert not (tmp_path / "latin.labelled.csv").exists()
    assert "the worker would dead-letter it (validation_error" in one_line_error("fine", "")
    assert "text_too_long" in one_line_error("x" * 20_001)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"id,text\n1,\n2,   \n")
    existing = tmp_path / "keep.csv"
    existing.write_text("keep\n")
    assert "no row could be labelled" in one_line_error("--csv", str(empty), "--out", str(existing))
    assert existing.read_text() == "keep\n"


def test_a_labelled_file_reads_back_with_the_input_untouched(predictor: Predictor, tmp_path: Path) -> None:
    texts = ['a "quoted", text\nover lines', "«ünïcode» ✓", "  spaces  "]
    src = write(tmp_path / "in.csv", [["text", "label"], *[[t, "gold"] for t in texts]])
    label_csv(predictor, src, tmp_path / "out.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text(encoding="utf-8"))))
    assert [r["text"] for r in rows] == texts and {r["label"] for r in rows} == {"gold"}
