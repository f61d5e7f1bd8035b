"""The `sentiment` command. Heavy imports (torch, faust) happen inside the commands that need them."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from stream.models_cli import app as models_app
from stream.services import ServiceUnavailable
from stream.settings import get_settings
from stream.terminal_text import PlainTable as Table  # every cell literal, no control characters
from stream.terminal_text import markup_safe

app = typer.Typer(
    help="Live opinion tracking: stream reviews through a sentiment model into Postgres and Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()


def _fail(err: Exception) -> NoReturn:
    """A user's mistake or a service that is down: one red line on stderr, exit status 2, no traceback."""
    Console(stderr=True).print(f"[red]error:[/red] {markup_safe(err)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def init() -> None:
    """Create or upgrade the database schema and the Kafka topics. Safe to run again.

    Example: sentiment init
    """
    from storage.db import get_engine, safe_address
    from storage.migrate import upgrade
    from storage.partitions import apply_retention
    from storage.roles import RoleSetupError, provision
    from stream.services import check_postgres, create_topics

    s = get_settings()
    check_postgres(s)
    try:
        changed = provision(s.postgres.dsn(), s.postgres.role_dsns(), s.postgres.statement_timeout_ms)
    except RoleSetupError as e:
        _fail(e)
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


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSON Lines file")],
    fmt: Annotated[str, typer.Option("--format", help="csv, jsonl or auto (by extension)")] = "auto",
    text_col: str = "text",
    id_col: Annotated[str, typer.Option(help="column with the review id; '' if none")] = "review_id",
    source_col: str = "source",
    time_col: str = "created_at",
    source: Annotated[str | None, typer.Option(help="source for rows that have none")] = None,
    rate: Annotated[float | None, typer.Option(help="events per second, at most")] = None,
    limit: Annotated[int | None, typer.Option(help="stop after sending this many")] = None,
    topic: Annotated[str | None, typer.Option(help="default: the configured reviews topic")] = None,
) -> None:
    """Send a file of reviews to Kafka, one event per row, keyed by review id.

    Example: sentiment produce reviews.csv --text-col body --id-col id --source appstore --rate 200
    """
    from stream.producer import Columns, produce_file

    cols = Columns(text_col, id_col or None, source_col or None, time_col or None)
    summary = produce_file(file, get_settings(), cols, fmt, rate, limit, source, topic)
    skipped = sum(summary.skipped.values())
    console.print(f"sent {summary.sent}, skipped {skipped}")
    for reason, n in summary.skipped.most_common():
        console.print(f"  skipped {n}: {markup_safe(reason)}")
    for line in summary.first_skips:
        console.print(f"  e.g. {markup_safe(line)}")


@app.command()
def trends(
    minutes: Annotated[int | None, typer.Option(help="show the last N minutes")] = None,
    hours: Annotated[int | None, typer.Option(help="show the last N hours")] = None,
    source: Annotated[str | None, typer.Option(help="only this source")] = None,
) -> None:
    """Print the sentiment-trend counters from Redis, one row per bucket (default: last 15 minutes).

    Example: sentiment trends --hours 24 --source appstore
    """
    from storage.trends import HOUR, MINUTE
    from stream.services import check_redis, trend_counters

    s = get_settings()
    check_redis(s)
    resolution, n = (HOUR, hours) if hours else (MINUTE, minutes or 15)
    buckets = trend_counters(s).read(resolution, n, source=source)
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
    limit: Annotated[int, typer.Option(help="show the latest N")] = 20,
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
    try:
        result = readonly_query.run(get_engine(s.postgres.dsn("reader")), query, max_rows,
                                    s.postgres.statement_timeout_ms)
    except (readonly_query.SqlRefused, readonly_query.QueryError) as e:
        _fail(e)
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
    limit: int = 20,
    label: Annotated[str | None, typer.Option(help="negative, neutral or positive")] = None,
    source: str | None = None,
    search: Annotated[str | None, typer.Option(help="substring of the text (case-insensitive)")] = None,
) -> None:
    """Show the latest labelled reviews from Postgres.

    Example: sentiment reviews --label negative --limit 10
    """
    from storage.db import get_engine
    from storage.reviews import latest_reviews
    from stream.services import check_postgres

    s = get_settings()
    check_postgres(s)
    rows = latest_reviews(get_engine(s.postgres.url.get_secret_value()), limit, source, label, search)
    table = Table(title="latest labelled reviews")
    for col in ("review_id", "created_at", "source", "label", "score", "model", "corrected to", "text"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["review_id"], r["created_at"].strftime("%Y-%m-%d %H:%M"), r["source"], r["label"],
                      f"{r['score']:.2f}", r["model_version"], r["corrected_label"] or "", r["text"][:120])
    console.print(table)


@app.command()
def feedback(
    review_id: Annotated[str | None, typer.Argument(help="the review to correct")] = None,
    label: Annotated[str | None, typer.Argument(help="negative, neutral or positive")] = None,
    by: Annotated[str | None, typer.Option(help="who corrects it [default: $USER]")] = None,
    note: Annotated[str | None, typer.Option(help="why, for the next reader")] = None,
    limit: Annotated[int, typer.Option(help="without arguments: list the latest N corrections")] = 20,
) -> None:
    """Correct a review's label (stored beside the model's; the next `sentiment refresh` trains on it).

    Without arguments, lists the latest corrections. Plain SQL works too:
    INSERT INTO review_feedback (review_id, label, author) VALUES ('r-1', 'negative', 'ana')

    Example: sentiment feedback r-1042 negative --by ana --note "sarcasm"
    """
    from storage.db import get_engine
    from storage.feedback import FeedbackError, add_correction, corrections, default_author
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
    try:
        c = add_correction(engine, review_id, label.strip().lower(), by or default_author(), note)
    except FeedbackError as e:
        _fail(e)
    console.print(markup_safe(f"{c.review_id}: {c.previous_label} -> {c.label} (by {c.author}, correction #{c.id})"))


@app.command()
def refresh(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="refresh YAML (configs/refresh.yaml)")],
    if_drift: Annotated[bool, typer.Option(help="only if the latest hour's drift is above the threshold")] = False,
    run_id: Annotated[str | None, typer.Option(help="name of the run directory [default: time + name]")] = None,
) -> None:
    """Retrain on the base data plus all feedback, score against production, promote through the gate.

    Writes a one-page report.md in the run directory. Schedule it with cron, a systemd timer or the compose
    `refresh` profile (README "Closing the loop").

    Example: sentiment refresh configs/refresh.yaml --if-drift
    """
    from storage.db import get_engine
    from storage.registry import RegistryError
    from stream.drift import latest_score
    from stream.services import check_postgres, check_redis, trend_counters
    from training.config import ConfigError
    from training.data import DataError
    from training.refresh import load_refresh_config, run_refresh

    s = get_settings()
    try:
        cfg = load_refresh_config(config)  # fail on a bad config before anything runs
    except ConfigError as e:
        _fail(e)
    if if_drift:
        check_redis(s)
        score = latest_score(trend_counters(s), hours=2)
        if score is None or score.score <= s.drift.threshold:
            console.print("no refresh: " + (f"drift {score.score:.3f} <= threshold {s.drift.threshold:g} (hour "
                                            f"{score.hour})" if score else "no drift score in the last 2 hours"))
            return
        console.print(f"drift {score.score:.3f} > threshold {s.drift.threshold:g} (hour {score.hour}): refreshing")
    check_postgres(s)
    try:
        result = run_refresh(cfg, get_engine(s.postgres.url.get_secret_value()), s.model_store(),
                             s.registry.eval_set, run_id)
    except (ConfigError, DataError, RegistryError) as e:
        _fail(e)
    c = result.counts
    console.print(f"feedback: {c.corrections} corrected reviews, {c.held_out} held out, {c.added_to_train} added "
                  f"to train, {c.replaced_base_labels} base labels replaced")
    console.print(f"candidate {result.candidate}: {'PROMOTED' if result.promoted else 'not promoted'} "
                  f"({result.reason})")
    console.print(f"report: {result.report}")


drift_app = typer.Typer(help="Drift of the live stream from the production model's reference.",
                        invoke_without_command=True, rich_markup_mode=None)


@drift_app.callback()
def drift(ctx: typer.Context, hours: Annotated[int, typer.Option(help="show the last N hours")] = 24) -> None:
    """Per-hour drift scores kept by the workers (label-mix PSI + confidence drop against the reference).

    Example: sentiment drift --hours 48   |   sentiment drift profile runs/<run>/model shared:tweeteval_sentiment
    """
    if ctx.invoked_subcommand is not None:
        return
    from stream.services import check_redis, trend_counters

    s = get_settings()
    check_redis(s)
    counters = trend_counters(s)
    reference = counters.drift_reference()
    if reference is None:
        console.print("no drift scores yet: a worker scores each hour once it has labelled "
                      f"{s.drift.min_events} reviews in it, for a model with a reference profile")
        return
    mix = ", ".join(f"{k} {v:.2f}" for k, v in reference["label_mix"].items())
    console.print(f"reference: model {markup_safe(reference['version'])}, predicted mix {mix}, mean confidence "
                  f"{reference['mean_confidence']:.3f} ({reference['rows']} {markup_safe(reference['source'])} rows); "
                  f"threshold {s.drift.threshold:g}")
    table = Table(title="drift per hour (UTC, by review time)")
    for col in ("hour", "reviews", "negative", "neutral", "positive", "confidence", "label PSI", "conf. drop",
                "score", ""):
        table.add_column(col, justify="right")
    for start, score in counters.read_drift(hours):
        if score is None:
            continue
        m = score["label_mix"]
        table.add_row(start.strftime("%Y-%m-%d %H:00"), str(score["events"]), *(f"{m[k]:.2f}" for k in m),
                      f"{score['mean_confidence']:.3f}", f"{score['label_psi']:.3f}",
                      f"{score['confidence_drop']:+.3f}", f"{score['score']:.3f}",
                      "DRIFT" if score["score"] > score["threshold"] else "")
    console.print(table)


@drift_app.command("profile")
def drift_profile(
    model_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Hugging Face model directory")],
    data: Annotated[str, typer.Argument(help="labelled data like the training data (CSV, JSONL, TweetEval dir)")],
    split: Annotated[str, typer.Option(help="TweetEval split to use")] = "validation",
) -> None:
    """Write a model's drift reference (reference_profile.json) from data like its training data.

    Models trained by `sentiment train` already have one; this is for models trained elsewhere.
    """
    from stream.drift import ReferenceProfile
    from stream.predictor import Predictor
    from training.data import load_split_file

    rows = load_split_file(data, split=split)
    predictor = Predictor(model_dir)
    probs = predictor.predict_probs(rows.texts)
    order = [predictor.labels.index(k) for k in ("negative", "neutral", "positive")]
    profile = ReferenceProfile.from_probabilities(probs[:, order].tolist(), training_counts=rows.counts(),
                                                  source=f"{data} ({split})")
    console.print(f"wrote {profile.write(model_dir)}: predicted mix "
                  + ", ".join(f"{k} {v:.3f}" for k, v in profile.label_mix.items())
                  + f", mean confidence {profile.mean_confidence:.3f} over {profile.rows} rows")


app.add_typer(drift_app, name="drift")


@app.command()
def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to label")] = None,
    csv_in: Annotated[Path | None, typer.Option("--csv", exists=True, help="CSV to label in batches")] = None,
    out: Annotated[Path | None, typer.Option(help="where to write the labelled CSV")] = None,
    text_col: str = "text",
    model_dir: Annotated[Path | None, typer.Option(help="default: the configured model")] = None,
) -> None:
    """Label texts or a whole CSV with the same predictor the worker uses (no Kafka needed).

    Example: sentiment classify "love it" "meh"   |   sentiment classify --csv in.csv --out labelled.csv
    """
    from stream.batch import classify_csv, load_predictor

    predictor = load_predictor(get_settings(), model_dir)
    if csv_in is not None:
        target = out or csv_in.with_name(csv_in.stem + ".labelled.csv")
        n = classify_csv(predictor, csv_in, target, text_col)
        console.print(f"labelled {n} rows -> {target}")
        return
    if not texts:
        raise typer.BadParameter("give texts or --csv FILE")
    table = Table()
    for col in ("label", "score", "negative", "neutral", "positive", "text"):
        table.add_column(col)
    for text, p in zip(texts, predictor.predict(texts), strict=True):
        table.add_row(p.label, f"{p.score:.2f}", *(f"{p.probs[k]:.2f}" for k in ("negative", "neutral", "positive")),
                      text)
    console.print(table)


@app.command()
def demo(timeout: Annotated[float, typer.Option(help="seconds to wait for the worker")] = 300) -> None:
    """Run the main job end to end on the local stack (`make demo` runs this after `make up`).

    Example: sentiment demo
    """
    from stream.demo import run_demo

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

    from stream.dashboard.launch import streamlit_argv

    if importlib.util.find_spec("streamlit") is None:
        raise typer.BadParameter("Streamlit is not installed: pip install -e '.[dashboard]'")
    argv = streamlit_argv(os.environ, port, address)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # Streamlit takes over this process: signals and exit status are its own


@app.command()
def status() -> None:
    """Health of Kafka, Postgres, Redis, the workers, the model and drift; exits 1 if a service is down.

    Example: sentiment status
    """
    from stream.services import check_drift, check_kafka, check_model, check_postgres, check_redis, check_workers

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


def _mount_training() -> None:
    try:
        from training.cli import app as training_app
    except ImportError:  # the training package is optional at run time
        return
    for command in training_app.registered_commands:
        app.registered_commands.append(command)


_mount_training()
app.add_typer(models_app, name="models")  # sentiment models list | publish | promote | rollback


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its retries are reported by us, once
    try:
        app()
    except (ServiceUnavailable, FileNotFoundError) as e:  # raised outside a command's own handling
        Console(stderr=True).print(f"[red]error:[/red] {markup_safe(e)}", highlight=False)
        sys.exit(2)
