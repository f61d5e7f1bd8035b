"""Read and label data: `sentiment trends | dlq | sql | reviews | feedback | classify`."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sentiment_app.cli.root import app, console
from sentiment_app.terminal_text import PlainTable as Table  # every cell literal, no control characters
from sentiment_app.terminal_text import markup_safe
from sentiment_model.errors import UserError
from stream.settings import get_settings


@app.command()
def trends(
    minutes: Annotated[int | None, typer.Option(help="show the last N minutes (1 to 2880)")] = None,
    hours: Annotated[int | None, typer.Option(help="show the last N hours (1 to 840)")] = None,
    source: Annotated[str | None, typer.Option(help="only this source")] = None,
) -> None:
    """Print the sentiment-trend counters from Redis, one row per bucket (default: last 15 minutes).

    Example: sentiment trends --hours 24 --source appstore
    """
    from sentiment_app.cli.reading import trend_window, unknown_source_hint
    from storage.trends import HOUR
    from stream.services import check_redis, trend_counters

    s = get_settings()
    resolution, n = trend_window(s, minutes, hours)
    check_redis(s)
    counters = trend_counters(s)
    buckets = counters.read(resolution, n, source=source)
    if source and not any(b.total for b in buckets) and source not in (known := counters.sources(resolution, n)):
        console.print(markup_safe(unknown_source_hint(source, known, f"{n} {'hours' if hours else 'minutes'}")))
        return
    table = Table(title=f"sentiment per {'hour' if resolution == HOUR else 'minute'}"
                  + (f" — {source}" if source else "") + " (UTC, by review time)")
    for col in ("bucket", "negative", "neutral", "positive", "total", "negative %"):
        table.add_column(col, justify="right")
    fmt = "%Y-%m-%d %H:00" if resolution == HOUR else "%Y-%m-%d %H:%M"
    for b in buckets:
        table.add_row(b.start.strftime(fmt), *(str(b.counts[k]) for k in ("negative", "neutral", "positive")),
                      str(b.total), f"{100 * b.share('negative'):.0f}" if b.total else "-")
    console.print(table)


@app.command()
def dlq(
    limit: Annotated[int, typer.Option(min=1, help="show the latest N")] = 20,
    show_value: Annotated[bool, typer.Option(help="print the raw value (first 200 bytes)")] = False,
) -> None:
    """List dead-lettered events: the reason, the source position and (optionally) the raw value.

    Example: sentiment dlq --limit 50 --show-value
    """
    from stream.dlq import read_dead_letters
    from stream.services import check_kafka

    s = get_settings()
    check_kafka(s)
    letters = read_dead_letters(s.kafka.dlq_topic, s.kafka.client_options(), limit=limit)
    table = Table(title=f"dead letters in {s.kafka.dlq_topic} (latest {limit})")
    for col in ("source position", "failed at (UTC)", "reason", "detail") + (("value",) if show_value else ()):
        table.add_column(col, overflow="fold")
    for d in letters:
        when = datetime.fromtimestamp(d.failed_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        value = (d.raw_value() or b"")[:200]
        table.add_row(d.position, when, d.reason, d.detail, *((repr(value)[2:-1],) if show_value else ()))
    console.print(table)


@app.command()
def sql(query: Annotated[str, typer.Argument(help="one query (SELECT, WITH, VALUES, TABLE); runs read-only")],
        max_rows: Annotated[int, typer.Option(min=1, help="fetch at most this many rows")] = 100) -> None:
    """Run one read-only query as the reader role (statement timeout applies; README "Security").

    Example: sentiment sql "SELECT * FROM sentiment_hourly_total ORDER BY hour DESC LIMIT 12"
    """
    from storage import readonly_query
    from storage.db import get_engine

    s = get_settings()
    result = readonly_query.run(get_engine(s.postgres.dsn("reader")), query, max_rows,
                                s.postgres.statement_timeout_ms)  # SqlRefused, QueryError: user errors
    table = Table()
    for c in result.columns:
        table.add_column(c, overflow="fold")
    for r in result.rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console.print(table)
    if result.more:
        console.print(f"first {max_rows} rows shown; the rest was not fetched (raise --max-rows)")


@app.command()
def reviews(
    limit: Annotated[int, typer.Option(min=1, help="show the latest N")] = 20,
    label: Annotated[str | None, typer.Option(help="negative, neutral or positive")] = None,
    source: str | None = None,
    search: Annotated[str | None, typer.Option(help="substring of the text (case-insensitive)")] = None,
) -> None:
    """Show the latest labelled reviews from Postgres.

    Example: sentiment reviews --label negative --limit 10
    """
    from sentiment_app.cli.reading import check_label, reviews_table
    from storage.db import get_engine
    from storage.reviews import latest_reviews
    from stream.services import check_postgres

    label = check_label(label)
    s = get_settings()
    check_postgres(s)
    rows = latest_reviews(get_engine(s.postgres.url.get_secret_value()), limit, source, label, search)
    console.print(reviews_table(rows, console.width))


@app.command()
def feedback(
    review_id: Annotated[str | None, typer.Argument(help="the review to correct")] = None,
    label: Annotated[str | None, typer.Argument(help="negative, neutral or positive")] = None,
    by: Annotated[str | None, typer.Option(help="who corrects it [default: $USER]")] = None,
    note: Annotated[str | None, typer.Option(help="why, for the next reader")] = None,
    limit: Annotated[int, typer.Option(min=1, help="without arguments: list the latest N corrections")] = 20,
) -> None:
    """Correct a review's label (stored beside the model's; the next `sentiment refresh` trains on it).

    Without arguments, lists the latest corrections. Plain SQL works too:
    INSERT INTO review_feedback (review_id, label, author) VALUES ('r-1', 'negative', 'ana')

    Example: sentiment feedback r-1042 negative --by ana --note "sarcasm"
    """
    from storage.db import get_engine
    from storage.feedback import add_correction, corrections, default_author
    from stream.services import check_postgres

    s = get_settings()
    check_postgres(s)
    engine = get_engine(s.postgres.url.get_secret_value())
    if review_id is None:
        table = Table(title="latest label corrections")
        for col in ("when", "review_id", "was", "now", "by", "note"):
            table.add_column(col, overflow="fold")
        for c in corrections(engine, limit):
            table.add_row(c.created_at.strftime("%Y-%m-%d %H:%M"), c.review_id, c.previous_label, c.label, c.author,
                          c.note or "")
        console.print(table)
        return
    if label is None:
        raise typer.BadParameter("give the corrected label: negative, neutral or positive")
    c = add_correction(engine, review_id, label.strip().lower(), by or default_author(), note)
    console.print(markup_safe(f"{c.review_id}: {c.previous_label} -> {c.label} (by {c.author}, correction #{c.id})"))


@app.command()
def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to label")] = None,
    csv_in: Annotated[Path | None, typer.Option("--csv", exists=True, dir_okay=False,
                                                help="CSV to label, streamed in batches")] = None,
    out: Annotated[Path | None, typer.Option(help="where to write the labelled CSV [default: IN.labelled.csv]; "
                                                  "written whole or not at all, never the input")] = None,
    text_col: Annotated[str, typer.Option(help="the CSV column with the texts")] = "text",
    model_dir: Annotated[Path | None, typer.Option(help="default: the configured model")] = None,
) -> None:
    """Label texts or a whole CSV with the model and predictor the workers serve (no Kafka needed).

    The CSV keeps every input column and gains sentiment_label, sentiment_score, sentiment_p_negative,
    sentiment_p_neutral and sentiment_p_positive (sentiment2_... if those names are taken). Rows the worker
    would dead-letter (empty or too long text) or that do not parse are left out and reported with their line.

    Example: sentiment classify "love it" "meh"   |   sentiment classify --csv in.csv --out labelled.csv
    """
    from sentiment_app.csv_labelling import label_checked, load_predictor, preflight, text_rejection

    s = get_settings()
    if csv_in is not None:
        target = out or csv_in.with_name(csv_in.stem + ".labelled.csv")
        preflight(csv_in, target, text_col)  # before the model loads: these need none
    elif not texts:
        raise typer.BadParameter("give texts or --csv FILE")
    else:
        for i, text in enumerate(texts, start=1):
            rejection = text_rejection(text, s.worker)
            if rejection is not None:
                raise UserError(f"text {i} ({text[:40]!r}) is not labelled: the worker would dead-letter it "
                                f"({rejection.reason}: {rejection.detail})")
    predictor = load_predictor(s, model_dir)
    console.print(markup_safe(f"model {predictor.version} ({predictor.model_dir})"), highlight=False, soft_wrap=True)
    if csv_in is not None:
        progress = RowsDone()
        try:
            report = label_checked(predictor, csv_in, target, text_col, on_progress=progress, worker=s.worker)
        finally:
            progress.close()
        console.print(markup_safe(f"labelled {report.labelled} rows -> {target}"), highlight=False, soft_wrap=True)
        if report.bad_total:
            err = Console(stderr=True, highlight=False, soft_wrap=True)
            err.print(report.bad_summary(), markup=False)
            for bad in report.first_bad:
                err.print(f"  line {bad.line}: {bad.reason}: {bad.detail}", markup=False)
        return
    table = Table()
    for col in ("label", "score", "negative", "neutral", "positive", "text"):
        table.add_column(col)
    for text, p in zip(texts, predictor.predict(texts), strict=True):
        table.add_row(p.label, f"{p.score:.2f}", *(f"{p.probs[k]:.2f}" for k in ("negative", "neutral", "positive")),
                      text)
    console.print(table)


class RowsDone:
    """Progress on stderr: a line rewritten in place on a terminal, else a line every ``every_s`` seconds."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.tty = sys.stderr.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self.last = time.monotonic()
        self.shown = False

    def __call__(self, rows: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        sys.stderr.write(f"\r{rows:,} rows done" if self.tty else f"{rows:,} rows done\n")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")
