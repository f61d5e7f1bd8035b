"""Operate the stack: `sentiment init | worker | produce | status | demo | dashboard`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from sentiment_app.cli.root import app, console
from sentiment_app.terminal_text import PlainTable as Table  # every cell literal, no control characters
from sentiment_app.terminal_text import markup_safe
from sentiment_model.errors import UserError
from stream.settings import get_settings


@app.command()
def init() -> None:
    """Create or upgrade the database schema and the Kafka topics. Safe to run again.

    Example: sentiment init
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-step INFO lines; the summary below says it
    from storage.db import get_engine, safe_address
    from storage.migrate import upgrade
    from storage.partitions import apply_retention
    from storage.roles import provision
    from stream.services import check_postgres, create_topics

    s = get_settings()
    check_postgres(s)
    changed = provision(s.postgres.dsn(), s.postgres.role_dsns(), s.postgres.statement_timeout_ms)
    upgrade(s.postgres.dsn())
    console.print(f"schema at head on {safe_address(s.postgres.dsn())}; roles "
                  + (", ".join(changed) if changed else "already set up"))
    days = s.postgres.retention_days
    dropped = apply_retention(get_engine(s.postgres.dsn()), days)
    console.print(f"reviews kept {f'{days} days' if days else 'forever'}"
                  + (f"; dropped {', '.join(dropped)}" if dropped else ""))
    created = create_topics(s)
    console.print(f"topics: {', '.join(created) + ' created' if created else 'already there'}")


@app.command()
def worker(loglevel: str = "info") -> None:
    """Run a stream worker (a Faust worker; start several to share the topic's partitions).

    Example: sentiment worker --loglevel info
    """
    from stream.app import run_worker

    sys.argv = [sys.argv[0]]  # faust parses argv itself
    run_worker(get_settings(), loglevel=loglevel)


def _topic(value: str | None) -> str | None:
    from stream.settings import kafka_topic_name

    try:
        return None if value is None else kafka_topic_name(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, metavar="FILE",
                                         help="CSV, TSV or JSON Lines file (UTF-8)")],
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT",
                                     help="csv, tsv, jsonl or auto (by extension)")] = "auto",
    text_col: Annotated[str, typer.Option(metavar="COLUMN", help="the column with the text")] = "text",
    id_col: Annotated[str | None, typer.Option(
        metavar="COLUMN", help="the column with the review id [default: review_id if the file has it]; '' for "
                               "none: ids are then Kafka positions and sending the file again stores it again")
    ] = None,
    source_col: Annotated[str | None, typer.Option(metavar="COLUMN", help="[default: source if present]")] = None,
    time_col: Annotated[str | None, typer.Option(metavar="COLUMN", help="[default: created_at if present]")] = None,
    source: Annotated[str | None, typer.Option(help="source for rows that have none")] = None,
    rate: Annotated[float | None, typer.Option(min=0.001, help="events per second, at most")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="stop after sending this many")] = None,
    topic: Annotated[str | None, typer.Option(callback=_topic, help="default: the configured reviews topic")] = None,
) -> None:
    """Send a file of reviews to Kafka, one event per row, keyed by review id.

    A column named on the command line must exist (the error lists the header). Rows the worker would
    dead-letter are skipped and counted; exit code 2 when every row was skipped.

    Example: sentiment produce examples/reviews.jsonl --rate 50   |   sentiment produce mine.csv --text-col body
    --id-col id --source appstore
    """
    from stream.producer import Columns, produce_file

    cols = Columns(text_col, id_col, source_col, time_col)
    summary = produce_file(file, get_settings(), cols, fmt, rate, limit, source, topic)
    skipped = sum(summary.skipped.values())
    console.print(f"sent {summary.sent}, skipped {skipped}")
    for reason, n in summary.skipped.most_common():
        console.print(f"  skipped {n}: {markup_safe(reason)}")
    for line in summary.first_skips:
        console.print(f"  e.g. {markup_safe(line)}")
    if summary.failed:
        raise UserError(f"{summary.failed} rows were not acknowledged by Kafka (first: {summary.first_failure}); "
                        "send the file again (rows with ids are stored once)")
    if skipped and not summary.sent:
        raise UserError(f"every row of {file} was skipped ({skipped}): nothing sent; see the reasons above")


@app.command()
def status() -> None:
    """Health of Kafka, Postgres, Redis, the workers, the model and drift; exits 1 if a service is down.

    Example: sentiment status
    """
    from stream.services import (
        ServiceUnavailable,
        check_drift,
        check_kafka,
        check_model,
        check_postgres,
        check_redis,
        check_workers,
    )

    s = get_settings()
    table = Table(title="sentiment stack")
    for col in ("service", "address", "state", "detail"):
        table.add_column(col)
    healthy = True
    for check in (check_kafka, check_postgres, check_redis, check_workers, check_model, check_drift):
        try:
            h = check(s)
            table.add_row(h.service, h.address, "ok" if h.ok else "degraded", h.detail)
        except ServiceUnavailable as e:
            table.add_row(e.service, e.address, "DOWN", str(e).splitlines()[0].split(": ", 1)[-1])
            healthy = False
    console.print(table, soft_wrap=True)
    raise typer.Exit(0 if healthy else 1)


@app.command()
def demo(timeout: Annotated[float, typer.Option(help="seconds to wait for the worker")] = 300) -> None:
    """Run the main job end to end on the local stack (`make demo` runs this after `make up`).

    Example: sentiment demo
    """
    from sentiment_app.demo import run_demo

    run_demo(get_settings(), timeout)


@app.command()
def dashboard(
    port: Annotated[int | None, typer.Option(help="[default: $STREAMLIT_SERVER_PORT or 8501]")] = None,
    address: Annotated[str | None, typer.Option(help="[default: $STREAMLIT_SERVER_ADDRESS or 127.0.0.1]")] = None,
) -> None:
    """Serve the web dashboard: live trends, latest reviews, classify text or a CSV, experiments and models.

    Example: sentiment dashboard --port 8501   (then open http://127.0.0.1:8501)
    """
    import importlib.util
    import os

    from sentiment_app.dashboard.launch import streamlit_argv

    if importlib.util.find_spec("streamlit") is None:
        raise typer.BadParameter("Streamlit is not installed: pip install -e '.[dashboard]'")
    argv = streamlit_argv(os.environ, port, address)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # Streamlit takes over this process: signals and exit status are its own

