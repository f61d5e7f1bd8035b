"""Offline labelling of a CSV with the model the workers serve (the `classify` command and the dashboard).

The input is never changed: the output is written beside ``--out`` and renamed over it only when the whole
file is labelled (``atomic_output``), and an output that names the input is refused. Every input column is
kept as it is; the model's columns are added after them with the prefix ``sentiment_`` (``sentiment_label``,
``sentiment_score``, ``sentiment_p_negative`` ...; ``sentiment2_`` and so on when the input already has one of
those names). Rows are streamed (``stream.csv_rows``) and labelled ``chunk`` at a time, so memory is flat in
the file's length. A row that cannot be labelled (a field count other than the header's, bytes that are not
UTF-8, a text the worker would dead-letter: empty, too long, NUL) is left out and counted in the
``LabelReport``, never an exception.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sentiment_app.atomic_output import atomic_output, check_target, same_file
from sentiment_model.errors import UserError
from sentiment_model.predictor import Predictor, predictor_from_settings
from stream.csv_rows import BadRow, Row, check_utf8, open_csv
from stream.events import RawRecord, Rejection, parse_record
from stream.serving import serving_model
from stream.settings import Settings, WorkerSettings

ADDED = ("label", "score", "p_negative", "p_neutral", "p_positive")
FIRST_BAD_SHOWN = 5


def load_predictor(settings: Settings, model_dir: Path | None = None) -> Predictor:
    """``model_dir``'s model, else the one the workers serve (``stream.serving.serving_model``)."""
    if model_dir is not None:
        return predictor_from_settings(settings.model, model_dir)
    ref, _ = serving_model(settings)
    return predictor_from_settings(settings.model, ref.artifact_dir, ref.version)


def added_columns(header: Sequence[str]) -> list[str]:
    """The names of the model's columns: ``sentiment_label`` ..., or ``sentiment2_label`` ... (and so on)
    when the input already has any of them, so that no input column is ever overwritten."""
    taken = set(header)
    n = 1
    while True:
        names = [f"sentiment{n if n > 1 else ''}_{c}" for c in ADDED]
        if taken.isdisjoint(names):
            return names
        n += 1


def text_rejection(text: str, worker: WorkerSettings) -> Rejection | None:
    """Why the worker would dead-letter an event with this text (``stream.events.parse_record``), or None."""
    value = json.dumps({"text": text}).encode()  # ASCII escapes: a lone surrogate reaches the worker's own check
    judged = parse_record(RawRecord("classify", 0, 0, None, None, value), worker.max_text_chars,
                          worker.max_metadata_bytes)
    return judged if isinstance(judged, Rejection) else None


@dataclass
class LabelReport:
    """What became of every input row: labelled, or counted bad by reason (the first few kept with their line)."""

    columns: list[str]  # the added column names
    labelled: int = 0
    labels: Counter[str] = field(default_factory=Counter)  # labelled rows per label
    bad: Counter[str] = field(default_factory=Counter)
    first_bad: list[BadRow] = field(default_factory=list)

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def add_bad(self, row: BadRow) -> None:
        self.bad[row.reason] += 1
        if len(self.first_bad) < FIRST_BAD_SHOWN:
            self.first_bad.append(row)

    def bad_summary(self) -> str:
        """One line: how many rows were left out, by reason, and the first few line numbers."""
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.bad.most_common())
        lines = ", ".join(str(b.line) for b in self.first_bad)
        return f"{self.bad_total} rows not labelled ({reasons}); first at line(s) {lines}"


def label_rows(predictor: Predictor, rows: Iterable[Row | BadRow], text_index: int, out: TextIO,
               report: LabelReport, worker: WorkerSettings, chunk: int = 256,
               on_progress: Callable[[int], None] | None = None) -> LabelReport:
    """Label ``rows`` ``chunk`` at a time, writing each labelled row (its fields, then the model's) to ``out``;
    ``on_progress`` gets the number of input rows handled so far after each chunk."""
    writer = csv.writer(out)
    pending: list[Row] = []
    done = 0

    def flush() -> None:
        predictions = predictor.predict([r.fields[text_index] for r in pending]) if pending else []
        for r, p in zip(pending, predictions, strict=True):
            writer.writerow([*r.fields, p.label, f"{p.score:.4f}", *(f"{p.probs[k]:.4f}" for k in
                                                                      ("negative", "neutral", "positive"))])
            report.labels[p.label] += 1
        report.labelled += len(pending)
        pending.clear()
        if on_progress:
            on_progress(done)

    for row in rows:
        done += 1
        if isinstance(row, Row):
            rejection = text_rejection(row.fields[text_index], worker)
            if rejection is None:
                pending.append(row)
            else:
                report.add_bad(BadRow(row.line, rejection.reason, rejection.detail))
        else:
            report.add_bad(row)
        if len(pending) >= chunk:
            flush()
    if pending or done:
        flush()
    return report


def preflight(src: Path, dst: Path, text_col: str) -> None:
    """The checks that need no model: ``dst`` is not ``src`` and can be written, ``src`` is UTF-8 and has
    ``text_col``."""
    if same_file(src, dst):
        raise UserError(f"--out {dst} is the input file: labelling would replace it; give another --out")
    check_target(dst)
    check_utf8(src)
    with open_csv(src) as rows:
        rows.column(text_col, "--text-col")


def label_csv(predictor: Predictor, src: Path, dst: Path, text_col: str = "text", chunk: int = 256,
              on_progress: Callable[[int], None] | None = None,
              worker: WorkerSettings | None = None) -> LabelReport:
    """Label ``src`` into ``dst`` (whole or not at all). ``UserError`` when ``dst`` is ``src``, the file is not
    UTF-8, ``text_col`` is missing, or no row could be labelled (then ``dst`` is left as it was)."""
    preflight(src, dst, text_col)
    return label_checked(predictor, src, dst, text_col, chunk, on_progress, worker)


def label_checked(predictor: Predictor, src: Path, dst: Path, text_col: str = "text", chunk: int = 256,
                  on_progress: Callable[[int], None] | None = None,
                  worker: WorkerSettings | None = None) -> LabelReport:
    """``label_csv`` for a caller that ran ``preflight`` itself (the CLI, before loading the model): the UTF-8
    check reads the whole file, so it runs once."""
    with open_csv(src) as rows, atomic_output(dst) as out:
        text_index = rows.column(text_col, "--text-col")
        report = LabelReport(added_columns(rows.header))
        csv.writer(out).writerow([*rows.header, *report.columns])
        label_rows(predictor, rows, text_index, out, report, worker or WorkerSettings(), chunk, on_progress)
        if report.labelled == 0 and report.bad_total:
            raise UserError(f"{src}: no row could be labelled: {report.bad_summary()}; {dst} left as it was")
    return report

