"""Classify: one text, or a whole CSV in batches, through the same predictor the worker uses."""

from __future__ import annotations

import csv
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from sentiment_app.dashboard.ui import load_settings
from sentiment_model.errors import UserError
from sentiment_model.labels import LABELS
from stream.settings import Settings

if TYPE_CHECKING:
    from sentiment_model.predictor import Predictor
    from storage.registry import ModelRef

CHUNK = 128  # rows per predict call: the progress bar moves at least every chunk


@dataclass(frozen=True)
class CsvResult:
    name: str
    data: bytes  # the labelled CSV
    rows: int
    seconds: float

    @property
    def rows_per_minute(self) -> float:
        return 60 * self.rows / self.seconds if self.seconds > 0 else float("inf")

    def frame(self) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(self.data), dtype=str, keep_default_na=False)


def text_probabilities(predictor: Predictor, text: str) -> tuple[str, pd.DataFrame]:
    """The label of one text and a one-column table of its three probabilities."""
    p = predictor.predict([text])[0]
    return p.label, pd.DataFrame({"probability": [p.probs[k] for k in LABELS]}, index=list(LABELS))


def csv_columns(data: bytes) -> list[str]:
    """The header of an uploaded CSV (a byte-order mark, as Excel writes, is dropped)."""
    return next(csv.reader(io.StringIO(data.decode("utf-8-sig"))), [])


def count_rows(data: bytes) -> int:
    """Data rows of a CSV, quoted line breaks included, for the progress bar's total."""
    return max(sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8-sig")))) - 1, 0)


def classify_upload(predictor: Predictor, name: str, data: bytes, text_col: str = "text",
                    on_progress: Callable[[int], None] | None = None, chunk: int = CHUNK) -> CsvResult:
    """Label an uploaded CSV with ``csv_labelling.classify_csv`` (the `sentiment classify --csv` code path),
    timing the labelling alone so the page can report rows per minute."""
    from sentiment_app.csv_labelling import classify_csv

    with tempfile.TemporaryDirectory(prefix="dashboard-csv-") as tmp:
        src, dst = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        src.write_text(data.decode("utf-8-sig"), encoding="utf-8", newline="")
        start = time.perf_counter()
        rows = classify_csv(predictor, src, dst, text_col, chunk=chunk, on_progress=on_progress)
        seconds = time.perf_counter() - start
        return CsvResult(Path(name).stem + ".labelled.csv", dst.read_bytes(), rows, seconds)


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


def _one_text(model: Predictor) -> None:
    st.subheader("One text")
    text = st.text_area("text", "The delivery was late and the box was damaged.", key="classify_text")
    if st.button("Classify text", key="classify_text_button", type="primary") and text.strip():
        label, probs = text_probabilities(model, text)
        left, right = st.columns([1, 2])
        left.metric("label", label)
        left.dataframe(probs.style.format("{:.3f}"), key="classify_text_probs")
        right.bar_chart(probs, horizontal=True, height=160)


def _csv_file(model: Predictor) -> None:
    st.subheader("A CSV file")
    upload = st.file_uploader("CSV with a text column (UTF-8)", type=["csv"], key="classify_csv")
    if upload is not None:
        data = upload.getvalue()
        try:
            columns, total = csv_columns(data), count_rows(data)
        except (UnicodeDecodeError, csv.Error) as e:
            st.error(f"`{upload.name}` is not a readable UTF-8 CSV: {e}")
            return
        if not columns:
            st.error(f"`{upload.name}` is empty.")
            return
        text_col = st.selectbox("text column", columns, index=columns.index("text") if "text" in columns else 0,
                                key="classify_text_col")
        if st.button(f"Classify {total:,} rows", key="classify_csv_button", type="primary"):
            bar = st.progress(0.0, text=f"0 / {total:,} rows")

            def progress(done: int) -> None:
                bar.progress(min(done / total, 1.0) if total else 1.0, text=f"{done:,} / {total:,} rows")

            st.session_state["classify_result"] = classify_upload(model, upload.name, data, text_col, progress)
    result: CsvResult | None = st.session_state.get("classify_result")
    if result is not None:
        st.success(f"Labelled {result.rows:,} rows of `{result.name}` in {result.seconds:.1f} s: "
                   f"**{result.rows_per_minute:,.0f} rows/minute** on {model.device}.")
        frame = result.frame()
        columns = st.columns(4)
        columns[0].metric("throughput (rows/minute)", f"{result.rows_per_minute:,.0f}")
        for column, label in zip(columns[1:], LABELS, strict=True):
            column.metric(label, f"{int((frame['label'] == label).sum()):,}")
        st.dataframe(frame.head(50), hide_index=True, key="classify_preview")
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
    _one_text(model)
    st.divider()
    _csv_file(model)
