"""``sentiment models list | publish | promote | rollback``: the model lifecycle from the command line.

The registry lives in Postgres (``storage.registry``); artifacts are copied into the model store
(``SENTIMENT_REGISTRY__STORE_DIR``, default ``models/store``). Running workers follow the production
version on their own, within ``SENTIMENT_WORKER__RELOAD_INTERVAL_S`` (5 s) plus the model's load time.
Promote and rollback also re-point the ``models/current`` link, so ``classify`` and the dashboard
serve the same model as the workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stream.settings import Settings, get_settings

app = typer.Typer(help="Publish, promote and roll back model versions (the model registry).",
                  no_args_is_help=True, rich_markup_mode=None)
console = Console()


def _engine(settings: Settings):
    from storage.db import get_engine
    from stream.services import check_postgres

    check_postgres(settings)
    return get_engine(settings.postgres.url.get_secret_value())


def _fail(err: Exception) -> None:
    console.print(f"error: {err}", style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _registry_errors():
    from sqlalchemy import exc as sa_exc

    from storage.registry import RegistryError

    return RegistryError, FileNotFoundError, sa_exc.ProgrammingError


def _point_current(settings: Settings, artifact_dir: Path) -> None:
    """Re-point ``models_dir/current`` at the production artifact (a link only: a real directory is left alone)."""
    current = settings.models_dir / "current"
    if current.exists() and not current.is_symlink():
        console.print(f"note: {current} is a directory, not a link; left as it is")
        return
    current.parent.mkdir(parents=True, exist_ok=True)
    tmp = current.with_name(".current.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(artifact_dir.resolve(), target_is_directory=True)
    tmp.replace(current)  # atomic swap of the link


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
    try:
        versions = registry.list_versions(engine, metric=metric)
    except _registry_errors() as e:
        _fail(RuntimeError(f"{e}; has `sentiment init` run since the registry was added?"))
    table = Table(title=f"model versions (store: {s.model_store()})")
    for col in ("version", "stage", "eval set", metric, "created (UTC)", "promoted (UTC)"):
        table.add_column(col, no_wrap=col != "version")
    for v in versions:
        table.add_row(v.version, v.stage, v.eval_set, _fmt(v.score), v.created_at.strftime("%Y-%m-%d %H:%M"),
                      v.promoted_at.strftime("%Y-%m-%d %H:%M") if v.promoted_at else "-")
    console.print(table)
    if not versions:
        console.print("no versions yet: `sentiment models publish runs/<run_id>` adds one")
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
    run_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="a training run dir (or a model dir)")],
    eval_set: Annotated[str | None, typer.Option(
        help="tweeteval-test, tweeteval-validation, sample, or a labelled CSV/JSONL path "
             "[default: SENTIMENT_REGISTRY__EVAL_SET or tweeteval-test]")] = None,
    version: Annotated[str | None, typer.Option(help="version id [default: the run id]")] = None,
) -> None:
    """Copy a run's model into the model store, score it on an evaluation set, register it as a candidate.

    Example: sentiment models publish runs/20261129-031402-tweeteval-baseline --eval-set tweeteval-test
    """
    from storage import registry

    s = get_settings()
    engine = _engine(s)
    eval_set = eval_set or s.registry.eval_set
    console.print(f"publishing {run_dir} (scoring on {eval_set})")
    try:
        v = registry.publish(engine, run_dir, s.model_store(), eval_set, version)
    except _registry_errors() as e:
        _fail(e)
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
    from storage import registry

    s = get_settings()
    engine = _engine(s)
    try:
        d = registry.promote(engine, version, eval_set=eval_set, metric=metric or s.registry.metric,
                             margin=s.registry.margin if margin is None else margin, force=force)
    except _registry_errors() as e:
        _fail(e)
    scores = (f"{d.metric} on {d.eval_set}: candidate {_fmt(d.candidate_score)}, "
              f"production ({d.production_before or 'none'}) {_fmt(d.production_score)}")
    if not d.promoted:
        console.print(f"rejected: {d.reason}. {scores}. Production stays {d.production_before}. "
                      "Use --force to override, or --margin to allow a small drop.")
        raise typer.Exit(code=1)
    _point_current(s, registry.get_version(engine, version).artifact_dir)
    console.print(f"promoted {version} ({d.reason}). {scores}. Workers switch within "
                  f"{s.worker.reload_interval_s:g}s plus the load time.")


@app.command()
def rollback() -> None:
    """Archive the production version and bring back the one it replaced.

    Example: sentiment models rollback
    """
    from storage import registry

    s = get_settings()
    engine = _engine(s)
    try:
        d = registry.rollback(engine)
    except _registry_errors() as e:
        _fail(e)
    _point_current(s, registry.get_version(engine, d.candidate).artifact_dir)
    console.print(f"rolled back: {d.production_before} archived, {d.candidate} is production again")
