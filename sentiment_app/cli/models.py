"""``sentiment models list | publish | promote | rollback | shadow | compare``: the model lifecycle.

The registry lives in Postgres (``storage.registry``); artifacts are copied into the model store
(``SENTIMENT_REGISTRY__STORE_DIR``, default ``models/store``). Running workers follow the production
version on their own, within ``SENTIMENT_WORKER__RELOAD_INTERVAL_S`` (5 s) plus the model's load time.
Publish, promote and rollback go through ``sentiment_app.lifecycle.promotion`` (the gate scores with the
serving predictor; promote and rollback also re-point the ``models/current`` link atomically).
Errors a user can fix propagate as ``UserError``: the root CLI prints one line and exits 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from sentiment_app.cli.root import UserErrorsExit2
from sentiment_app.terminal_text import PlainConsole
from sentiment_app.terminal_text import PlainTable as Table  # every cell literal, no control characters
from sentiment_model.errors import UserError
from stream.settings import Settings, get_settings

app = typer.Typer(cls=UserErrorsExit2, help="Publish, promote and roll back model versions (the model registry).\n\n"
                  "\b\nExamples:\n  sentiment models list --decisions 5\n  sentiment models publish RUN_ID\n"
                  "  sentiment models promote RUN_ID",
                  no_args_is_help=True, rich_markup_mode=None)
console = PlainConsole()  # version names and paths are data: never markup, no escape sequences


def _engine(settings: Settings):
    from storage.db import get_engine
    from stream.services import check_postgres

    check_postgres(settings)
    return get_engine(settings.postgres.url.get_secret_value())


@contextmanager
def registry_tables() -> Iterator[None]:
    """A missing registry table means the schema is older than the registry: say which command fixes it."""
    from sqlalchemy import exc as sa_exc

    try:
        yield
    except sa_exc.ProgrammingError as e:
        raise UserError(f"{str(e.orig).splitlines()[0] if e.orig else e}; has `sentiment init` run since the "
                        "registry was added?") from None


def _not_from_registry(s: Settings) -> None:
    """Say so when workers would serve a model the registry does not name (pinned, or the ``current`` link)."""
    from sentiment_model.errors import ModelNotFoundError
    from stream.serving import serving_model

    try:
        ref, source = serving_model(s)
    except ModelNotFoundError:
        return
    if source == "pinned":
        console.print(f"SENTIMENT_MODEL__DIR pins {ref.artifact_dir}: workers serve it, not the production version")
    elif source == "current":
        console.print(f"no production version: workers serve {ref.artifact_dir.resolve()} through the current link "
                      "(unregistered); `sentiment models publish` that run, then `sentiment models promote`")


def _fmt(score: float | None) -> str:
    return "-" if score is None else f"{score:.4f}"


@app.command("list")
def list_(
    metric: Annotated[str, typer.Option(help="score column: macro_f1, macro_recall or accuracy")] = "macro_f1",
    decisions: Annotated[int, typer.Option(help="also show the latest N promotion decisions")] = 0,
) -> None:
    """Show every published version: stage, evaluation set and score, when created and promoted.

    Example: sentiment models list --decisions 5
    """
    from storage import registry

    s = get_settings()
    engine = _engine(s)
    with registry_tables():
        versions = registry.list_versions(engine, metric=metric)
    table = Table(title=f"model versions (store: {s.model_store()})")
    for col in ("version", "stage", "eval set", metric, "created (UTC)", "promoted (UTC)"):
        table.add_column(col, no_wrap=col != "version")
    for v in versions:
        table.add_row(v.version, v.stage, v.eval_set, _fmt(v.score), v.created_at.strftime("%Y-%m-%d %H:%M"),
                      v.promoted_at.strftime("%Y-%m-%d %H:%M") if v.promoted_at else "-")
    console.print(table)
    if not versions:
        console.print("no versions yet: `sentiment models publish RUN_ID` adds one (runs are in "
                      f"{s.runs_dir()})")
    _not_from_registry(s)
    if decisions:
        t = Table(title="promotion decisions (latest first)")
        for col in ("when (UTC)", "action", "candidate", "production before", "eval set", "candidate", "production",
                    "result", "reason"):
            t.add_column(col)
        for d in registry.decisions(engine, decisions):
            t.add_row(d["decided_at"].strftime("%Y-%m-%d %H:%M:%S"), d["action"], d["candidate"],
                      d["production_before"] or "-", d["eval_set"] or "-", _fmt(d["candidate_score"]),
                      _fmt(d["production_score"]),
                      ("promoted" if d["promoted"] else "rejected") + (" (forced)" if d["forced"] else ""), d["reason"])
        console.print(t)


@app.command()
def publish(
    run_dir: Annotated[Path, typer.Argument(help="a training run dir (or a model dir); a run id or runs/<run_id> "
                                             "is looked up in the models home (SENTIMENT_MODELS_DIR/runs)")],
    eval_set: Annotated[str | None, typer.Option(
        help="tweeteval-test, tweeteval-validation, sample, or a labelled CSV/JSONL path "
             "[default: SENTIMENT_REGISTRY__EVAL_SET or tweeteval-test]")] = None,
    version: Annotated[str | None, typer.Option(help="version id [default: the run id]")] = None,
) -> None:
    """Copy a run's model into the model store, score it on an evaluation set, register it as a candidate.

    Example: sentiment models publish runs/20261129-031402-tweeteval-baseline --eval-set tweeteval-test
    """
    from sentiment_app.lifecycle import promotion

    s = get_settings()
    run_dir = s.find_in_models_home(run_dir)
    engine = _engine(s)
    eval_set = eval_set or s.registry.eval_set
    console.print(f"publishing {run_dir} (scoring on {eval_set})")
    with registry_tables():
        v = promotion.publish(s, engine, run_dir, eval_set, version)
    console.print(f"published {v.version} as a candidate: macro_f1 {_fmt(v.score)} on {v.eval_set}; "
                  f"artifact {v.artifact_dir}")
    console.print(f"next: sentiment models promote {v.version}")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="a published version (see `sentiment models list`)")],
    force: Annotated[bool, typer.Option("--force", help="promote even if it scores lower (recorded)")] = False,
    margin: Annotated[float | None, typer.Option(
        help="needs score >= production + margin [default: SENTIMENT_REGISTRY__MARGIN or 0.0]")] = None,
    metric: Annotated[str | None, typer.Option(help="macro_f1, macro_recall or accuracy [default: macro_f1]")] = None,
    eval_set: Annotated[str | None, typer.Option(help="compare on this set [default: the candidate's]")] = None,
) -> None:
    """Make a version production if it is at least as good as production on the same evaluation set.

    Both are scored on the candidate's evaluation set (scores are computed once and kept). The decision
    is recorded either way; running workers switch within a few seconds. Exits 1 when rejected.

    Example: sentiment models promote 20261129-031402-tweeteval-baseline --margin 0.005
    """
    from sentiment_app.lifecycle import promotion

    s = get_settings()
    engine = _engine(s)
    with registry_tables():
        d = promotion.promote(s, engine, version, eval_set=eval_set, metric=metric, margin=margin, force=force)
    scores = (f"{d.metric} on {d.eval_set}: candidate {_fmt(d.candidate_score)}, "
              f"production ({d.production_before or 'none'}) {_fmt(d.production_score)}")
    if not d.promoted:
        console.print(f"rejected: {d.reason}. {scores}. Production stays {d.production_before}. "
                      "Use --force to override, or --margin to allow a small drop.")
        raise typer.Exit(code=1)
    console.print(f"promoted {version} ({d.reason}). {scores}. Workers switch within "
                  f"{s.worker.reload_interval_s:g}s plus the load time.")


@app.command()
def rollback() -> None:
    """Archive the production version and bring back the one it replaced.

    Example: sentiment models rollback
    """
    from sentiment_app.lifecycle import promotion

    s = get_settings()
    engine = _engine(s)
    with registry_tables():
        d = promotion.rollback(s, engine)
    console.print(f"rolled back: {d.production_before} archived, {d.candidate} is production again")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} ms"


@app.command()
def shadow(
    version: Annotated[str | None, typer.Argument(help="a published candidate (see `sentiment models list`)")] = None,
    share: Annotated[float, typer.Option(help="fraction of reviews the candidate also labels, 0 < share <= 1")] = 0.2,
    stop: Annotated[bool, typer.Option("--stop", help="stop the active shadow run")] = False,
) -> None:
    """Run a candidate beside production on a share of live reviews, writing no labels; or stop it.

    Workers that follow the registry pick it up within SENTIMENT_WORKER__RELOAD_INTERVAL_S and record,
    per shadowed review, both labels (and per batch both models' time); `sentiment models compare` shows
    the result. A review is shadowed when a hash of its id falls below the share, so a replay shadows the
    same reviews. Starting a shadow replaces the active one. Without arguments: show the active one.

    Example: sentiment models shadow 20261129-031402-tweeteval-baseline --share 0.2
    """
    from storage import shadow as shadow_store

    s = get_settings()
    engine = _engine(s)
    if stop and version is not None:
        raise UserError("--stop takes no version: it stops the active shadow run")
    with registry_tables():
        if stop:
            old = shadow_store.stop(engine)
            console.print(f"stopped shadowing {old.candidate} (deployment {old.id})" if old
                          else "no shadow run was active")
            return
        if version is None:
            dep = shadow_store.active(engine, s.model_store())
            console.print(f"shadowing {dep.candidate} on {dep.share:.0%} of reviews since "
                          f"{dep.started_at:%Y-%m-%d %H:%M} UTC (deployment {dep.id})" if dep
                          else "no shadow run is active; `sentiment models shadow VERSION --share 0.2` starts one")
            return
        dep, old = shadow_store.start(engine, version, share)
    if old is not None:
        console.print(f"stopped shadowing {old.candidate} (deployment {old.id})")
    console.print(f"shadowing {dep.candidate} on {dep.share:.0%} of reviews (deployment {dep.id}); workers start "
                  f"within {s.worker.reload_interval_s:g}s plus the load time. `sentiment models compare` shows "
                  "the results; `sentiment models shadow --stop` ends it.")


@app.command()
def compare(
    version: Annotated[str | None, typer.Argument(
        help="a shadowed candidate [default: the active shadow's, else the latest shadowed]")] = None,
) -> None:
    """Show how a shadowed candidate compares with production on live traffic, before promoting it.

    Prints the reviews shadowed, the agreement rate (and Cohen's kappa), the confusion between the two
    (rows: production's label, columns: the candidate's), per-class agreement, the latency cost, and
    both models' stored offline scores.

    Example: sentiment models compare 20261129-031402-tweeteval-baseline
    """
    from sentiment_model.labels import LABELS
    from storage import registry
    from storage import shadow as shadow_store

    s = get_settings()
    engine = _engine(s)
    with registry_tables():
        version = version or shadow_store.default_candidate(engine)
        if version is None:
            raise UserError("no shadow run yet: `sentiment models shadow VERSION --share 0.2` starts one")
        registry.get_version(engine, version)
        c = shadow_store.compare(engine, version)
        deps = shadow_store.deployments(engine, version)
        record = registry.production_record(engine)  # a name only: nothing is loaded
        prod = record.version if record else None
    versions = sorted(c.production_versions.items(), key=lambda kv: -kv[1])
    against = ", ".join(f"{v} ({n} reviews)" for v, n in versions) or prod or "-"
    console.print(f"shadow evaluation of {version} against production {against}")
    for d in deps:
        until = f"{d.stopped_at:%Y-%m-%d %H:%M}" if d.stopped_at else "now (active)"
        when = f"{d.started_at:%Y-%m-%d %H:%M} - {until}"
        console.print(f"  deployment {d.id}: {d.share:.0%} of reviews, {when} UTC")
    console.print(f"events shadowed: {c.events} (batches timed: {c.batches}, {c.batch_events} events in them)")
    if c.events:
        kappa = "-" if c.kappa is None else f"{c.kappa:.3f}"
        console.print(f"agreement: {_pct(c.agreement)} ({c.agreed} of {c.events}); Cohen's kappa {kappa}")
        t = Table(title="confusion (rows: production label, columns: candidate label)")
        t.add_column("production \\ candidate")
        for label in LABELS:
            t.add_column(label, justify="right")
        t.add_column("total", justify="right")
        for label, row in zip(LABELS, c.matrix(), strict=True):
            t.add_row(label, *map(str, row), str(sum(row)))
        console.print(t)
        t = Table(title="per class")
        for col in ("label", "production", "candidate", "agreement (of production's)", "agreement (of candidate's)"):
            t.add_column(col, justify="left" if col == "label" else "right")
        for label, pc in c.per_class().items():
            t.add_row(label, str(pc["production"]), str(pc["candidate"]), _pct(pc["agreement"]),
                      _pct(pc["candidate_agreement"]))
        console.print(t)
    ratio = "-" if c.latency_ratio is None else f"x{c.latency_ratio:.2f}"
    console.print(f"latency: production {_ms(c.production_ms_per_event)}/event, candidate "
                  f"{_ms(c.candidate_ms_per_event)}/event ({ratio}); shadowing added {_ms(c.added_ms_per_batch)} "
                  "per batch")
    prod_version = versions[0][0] if versions else prod
    scores = shadow_store.evaluations(engine, [v for v in (version, prod_version) if v])
    if scores:
        t = Table(title="offline scores (stored evaluations)")
        for col in ("eval set", "metric", f"candidate {version}", f"production {prod_version or '-'}"):
            t.add_column(col, justify="left" if col in ("eval set", "metric") else "right")
        for eval_set in sorted({es for _, es in scores}):
            for metric in ("macro_f1", "macro_recall", "accuracy"):
                cand = (scores.get((version, eval_set)) or {}).get(metric)
                base = (scores.get((prod_version, eval_set)) or {}).get(metric) if prod_version else None
                t.add_row(eval_set, metric, _fmt(cand), _fmt(base))
        console.print(t)
    else:
        console.print("offline scores: none stored for either version")
