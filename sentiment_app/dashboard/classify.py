"""Classify: one text, or a whole CSV in batches, through the same predictor the worker uses.

An upload is read once per content (cached by its SHA-256): the header and the first rows pick the text
column, one streaming pass counts the rows; labelling streams it through ``csv_labelling.label_csv``, the
`sentiment classify --csv` code path. Uploads above ``SENTIMENT_DASHBOARD__MAX_UPLOAD_MB`` are refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from sentiment_app.dashboard.ui import load_settings
from sentiment_app.terminal_text import markdown_literal
from sentiment_model.errors import UserError
from sentiment_model.labels import LABELS
from stream.csv_rows import BadRow, CsvRows, Row
from stream.settings import Settings

if TYPE_CHECKING:
    from sentiment_model.predictor import Predictor
    from storage.registry import ModelRef

CHUNK = 128  # rows per predict call: the progress bar moves at least every chunk
SAMPLE_ROWS = 20  # rows read to tell a text column from ids, numbers and dates
PREVIEW_ROWS = 50
# Column names that say "free text", in order of preference (matched as whole words, any case).
TEXT_NAMES = ("text", "review", "reviews", "comment", "comments", "content", "body", "message", "tweet",
              "sentence", "feedback", "description", "title")
ID_WORDS = {"id", "ids", "key", "uuid", "date", "time", "at", "no", "number", "count", "stars", "rating"}
_NUMBERISH = re.compile(r"^[\s\d.,:/+\-eE%TZ]*$")  # ids, numbers, dates and times


@dataclass(frozen=True)
class UploadInfo:
    """What the page needs to know about an upload before labelling it."""

    columns: list[str]
    text_col: str  # the picker's default
    rows: int  # records (blank lines are none)
    not_utf8: BadRow | None  # the first line that is not UTF-8: label_csv refuses such a file


@dataclass(frozen=True)
class CsvResult:
    name: str
    data: bytes  # the labelled CSV
    rows: int  # labelled
    seconds: float
    label_col: str  # the added label column (``sentiment_label``, or ``sentiment2_label`` ...)
    counts: dict[str, int]  # rows per label
    preview: pd.DataFrame  # the first rows
    bad: str | None = None  # the rows left out, on one line

    @property
    def rows_per_minute(self) -> float:
        return 60 * self.rows / self.seconds if self.seconds > 0 else float("inf")


def text_probabilities(predictor: Predictor, text: str) -> tuple[str, pd.DataFrame]:
    """The label of one text and a one-column table of its three probabilities."""
    p = predictor.predict([text])[0]
    return p.label, pd.DataFrame({"probability": [p.probs[k] for k in LABELS]}, index=list(LABELS))


def text_column(header: Sequence[str], sample: Sequence[Sequence[str]]) -> str:
    """The column that most likely holds the text: one named like text (``text``, ``review``, ``comment`` ...),
    else the one whose sample values are longest, ids, numbers and dates left out, else the first."""
    names = [name.strip().lower() for name in header]
    words = [set(re.findall(r"[a-z]+", name)) for name in names]
    for name in TEXT_NAMES:  # `text`, then `Review`, then `review_text`, `comment body` ... but not `review_id`
        for col, found in zip(header, names, strict=True):
            if name == found:
                return col
        for col, found in zip(header, words, strict=True):
            if name in found and not found & ID_WORDS:
                return col

    def wordiness(i: int) -> float:
        values = [r[i] for r in sample if i < len(r) and r[i].strip()]
        if not values or all(_NUMBERISH.match(v) for v in values):
            return 0.0
        return sum(len(v) for v in values) / len(values)

    best = max(range(len(header)), key=wordiness, default=0)
    return header[best] if header and wordiness(best) > 0 else (header[0] if header else "")


def inspect_upload(data: bytes, name: str) -> UploadInfo:
    """Header, text-column guess and row count of an upload, in one streaming pass (``UserError`` when it has
    no readable header)."""
    rows = CsvRows(io.BytesIO(data), name)
    sample: list[list[str]] = []
    count, not_utf8 = 0, None
    for record in rows:
        count += 1
        if isinstance(record, Row) and len(sample) < SAMPLE_ROWS:
            sample.append(record.fields)
        elif isinstance(record, BadRow) and record.reason == "invalid_utf8" and not_utf8 is None:
            not_utf8 = record
    return UploadInfo(rows.header, text_column(rows.header, sample), count, not_utf8)


@st.cache_data(show_spinner="Reading the CSV ...", max_entries=4)
def _inspect(digest: str, name: str, _data: bytes) -> UploadInfo:
    return inspect_upload(_data, name)


def upload_info(data: bytes, name: str) -> UploadInfo:
    """``inspect_upload``, once per content: the page's reruns (every widget change) reuse it."""
    return _inspect(hashlib.sha256(data).hexdigest(), name, data)


def classify_upload(predictor: Predictor, name: str, data: bytes, text_col: str = "text",
                    on_progress: Callable[[int], None] | None = None, chunk: int = CHUNK,
                    settings: Settings | None = None) -> CsvResult:
    """Label an uploaded CSV with ``csv_labelling.label_csv`` (the `sentiment classify --csv` code path),
    timing the labelling alone so the page can report rows per minute. ``UserError`` messages name the upload,
    not the temporary file."""
    from sentiment_app.csv_labelling import label_csv

    out_name = Path(name).stem + ".labelled.csv"
    with tempfile.TemporaryDirectory(prefix="dashboard-csv-") as tmp:
        src, dst = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        src.write_bytes(data)
        start = time.perf_counter()
        try:
            report = label_csv(predictor, src, dst, text_col, chunk, on_progress,
                               settings.worker if settings else None)
        except UserError as e:
            raise UserError(str(e).replace(str(dst), out_name).replace(str(src), name)) from None
        seconds = time.perf_counter() - start
        out = dst.read_bytes()
    reader = csv.DictReader(io.TextIOWrapper(io.BytesIO(out), encoding="utf-8", newline=""))  # the preview only
    preview = pd.DataFrame(list(islice(reader, PREVIEW_ROWS)), columns=reader.fieldnames, dtype=str)
    bad = report.bad_summary() if report.bad_total else None
    return CsvResult(out_name, out, report.labelled, seconds, report.columns[0],
                     {k: report.labels.get(k, 0) for k in LABELS}, preview, bad)


@st.cache_resource(show_spinner="Loading the model (once per server) ...", max_entries=2)
def _predictor(key: str, _settings: Settings, _ref: ModelRef) -> Predictor:
    from sentiment_model.predictor import predictor_from_settings

    return predictor_from_settings(_settings.model, _ref.artifact_dir, _ref.version)


def predictor(settings: Settings) -> Predictor:
    """The model the workers serve (``serving_model``), loaded once and shared by all sessions; a promotion,
    a rollback, a re-pointed ``current`` link or other model settings load the new one."""
    from stream.serving import serving_model

    ref, _ = serving_model(settings)
    key = f"{ref.version}|{ref.artifact_dir.resolve()}|{settings.model.model_dump_json()}"
    return _predictor(key, settings, ref)


def _one_text(model: Predictor, settings: Settings) -> None:
    from sentiment_app.csv_labelling import text_rejection

    st.subheader("One text")
    text = st.text_area("text", "The delivery was late and the box was damaged.", key="classify_text")
    if st.button("Classify text", key="classify_text_button", type="primary"):
        rejection = text_rejection(text, settings.worker)
        if rejection is not None:  # the worker would dead-letter it: so does the page
            st.error(f"The worker would not label this text ({rejection.reason}): {rejection.detail}",
                     icon=":material/error:")
            return
        label, probs = text_probabilities(model, text)
        left, right = st.columns([1, 2])
        left.metric("label", label)
        left.dataframe(probs.style.format("{:.3f}"), key="classify_text_probs")
        right.bar_chart(probs, horizontal=True, height=160)


def _csv_file(model: Predictor, settings: Settings) -> None:
    st.subheader("A CSV file")
    cap = settings.dashboard.max_upload_mb
    upload = st.file_uploader(f"CSV with a text column (UTF-8, at most {cap} MB)", type=["csv"],
                              key="classify_csv", max_upload_size=cap)
    if upload is not None:
        name = markdown_literal(upload.name)
        if upload.size > cap * 1024 * 1024:  # the uploader refuses these too; this is the server's own check
            st.error(f"{name} is {upload.size / 2**20:,.1f} MB, above this dashboard's {cap} MB limit "
                     "(SENTIMENT_DASHBOARD__MAX_UPLOAD_MB): label it with `sentiment classify --csv FILE --out OUT`.",
                     icon=":material/error:")
            return
        data = upload.getvalue()
        try:
            info = upload_info(data, upload.name)
        except UserError as e:
            st.error(markdown_literal(e), icon=":material/error:")
            return
        if info.not_utf8 is not None:
            st.error(f"{name}: line {info.not_utf8.line} is not UTF-8 ({info.not_utf8.detail}): save it as UTF-8 "
                     "(e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`) and upload it again.",
                     icon=":material/error:")
            return
        text_col = st.selectbox("text column", info.columns, index=info.columns.index(info.text_col),
                                key=f"classify_text_col_{upload.file_id}")
        total = info.rows
        if st.button(f"Classify {total:,} rows", key="classify_csv_button", type="primary"):
            bar = st.progress(0.0, text=f"0 / {total:,} rows")

            def progress(done: int) -> None:
                bar.progress(min(done / total, 1.0) if total else 1.0, text=f"{done:,} / {total:,} rows")

            try:
                st.session_state["classify_result"] = classify_upload(model, upload.name, data, text_col, progress,
                                                                      settings=settings)
            except UserError as e:
                bar.empty()
                st.error(markdown_literal(e), icon=":material/error:")
                return
    result: CsvResult | None = st.session_state.get("classify_result")
    if result is not None:
        st.success(f"Labelled {result.rows:,} rows of {markdown_literal(result.name)} in {result.seconds:.1f} s: "
                   f"**{result.rows_per_minute:,.0f} rows/minute** on {model.device}.")
        if result.bad:
            st.warning(markdown_literal(result.bad), icon=":material/warning:")
        columns = st.columns(4)
        columns[0].metric("throughput (rows/minute)", f"{result.rows_per_minute:,.0f}")
        for column, label in zip(columns[1:], LABELS, strict=True):
            column.metric(label, f"{result.counts[label]:,}")
        st.caption(f"The first {min(PREVIEW_ROWS, result.rows)} rows; the model's columns are `{result.label_col}` "
                   "and the ones after it (no input column is overwritten).")
        st.dataframe(result.preview, hide_index=True, key="classify_preview")
        st.download_button("Download the labelled CSV", result.data, result.name, "text/csv", on_click="ignore",
                           key="classify_download")


def render() -> None:
    st.title("Classify")
    settings = load_settings()
    try:
        model = predictor(settings)
    except (UserError, OSError, ValueError) as e:  # OSError/ValueError: unreadable weights or tokenizer
        st.error(f"No usable model: {e}", icon=":material/error:")
        return
    st.caption(f"Model `{model.version}` from `{model.model_dir}` on {model.device} — the worker's predictor.")
    _one_text(model, settings)
    st.divider()
    _csv_file(model, settings)
