"""The model registry: every read and write of published model versions, their scores and promotions.

A published version is a copy of a training run's Hugging Face model directory in the model store
(a local or shared directory), so the run directory can be deleted. Its row in ``model_version`` says
where that copy is, which run made it and its stage: ``candidate`` -> ``production`` -> ``archived``.
At most one version is production (a partial unique index); workers poll for it and switch to it.

Scores are kept per version and evaluation set (``score``: computed once by the evaluator the caller
passes). The promotion policy (which scores, what margin) is the application's
(``sentiment_app.lifecycle.promotion``); ``record_promotion`` applies a decision atomically and records it
in ``promotion_decision``, promoted or not; rollbacks are recorded there too.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Identity,
    Index,
    Table,
    Text,
    and_,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from sentiment_model.artifact import RunInfo, find_model_dir, is_model_dir
from sentiment_model.errors import UserError
from storage.schema import metadata

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("candidate", "production", "archived")
METRICS: tuple[str, ...] = ("macro_f1", "macro_recall", "accuracy")
_LOCK_KEY = 0x5E47_0002  # pg advisory lock: one promotion / rollback at a time
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

model_version = Table(
    "model_version", metadata,
    Column("version", Text, primary_key=True),
    Column("artifact_dir", Text, nullable=False),
    Column("run_id", Text),
    Column("base_model", Text),
    Column("eval_set", Text, nullable=False),
    Column("training_metrics", JSONB, nullable=False, server_default="{}"),
    Column("stage", Text, nullable=False, server_default="candidate"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("promoted_at", DateTime(timezone=True)),
    Index("model_version_one_production", "stage", unique=True, postgresql_where=text("stage = 'production'")),
)
model_evaluation = Table(
    "model_evaluation", metadata,
    Column("version", Text, ForeignKey("model_version.version", ondelete="CASCADE"), primary_key=True),
    Column("eval_set", Text, primary_key=True),
    Column("metrics", JSONB, nullable=False),
    Column("evaluated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
promotion_decision = Table(
    "promotion_decision", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("action", Text, nullable=False),
    Column("candidate", Text, ForeignKey("model_version.version"), nullable=False),
    Column("production_before", Text, ForeignKey("model_version.version")),
    Column("eval_set", Text),
    Column("metric", Text),
    Column("candidate_score", Float),
    Column("production_score", Float),
    Column("margin", Float),
    Column("forced", Boolean, nullable=False),
    Column("promoted", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("promotion_decision_candidate", "candidate", "decided_at"),
)

Evaluator = Callable[[Path, str], dict[str, Any]]


class RegistryError(UserError):
    """A registry operation that cannot be done as asked; the message says what to do instead."""


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to serve a version."""

    version: str
    artifact_dir: Path


@dataclass(frozen=True)
class VersionInfo:
    version: str
    stage: str
    artifact_dir: Path
    run_id: str | None
    base_model: str | None
    eval_set: str
    score: float | None  # the default metric on its own eval set
    created_at: datetime
    promoted_at: datetime | None


@dataclass(frozen=True)
class Decision:
    action: str  # promote | rollback
    candidate: str
    production_before: str | None
    promoted: bool
    reason: str
    eval_set: str | None = None
    metric: str | None = None
    candidate_score: float | None = None
    production_score: float | None = None
    margin: float | None = None
    forced: bool = False


# --- containment --------------------------------------------------------------------------------------

def contained(version: str, artifact_dir: Path, store: Path) -> Path:
    """The artifact's real path, if it lies inside the model store; else RegistryError.

    A ``model_version`` row is data: whoever can write it could name any directory, and loading a
    model runs what it ships. Links and ``..`` are resolved before the check, so neither leads out.
    A missing artifact is still returned (its path resolved): callers report it as not readable here.
    """
    root = store.resolve()
    try:
        real = artifact_dir.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise RegistryError(f"{version}: artifact {artifact_dir} cannot be resolved ({e}); republish it") from None
    if real == root or not real.is_relative_to(root):
        raise RegistryError(f"{version}: artifact {artifact_dir} resolves to {real}, outside the model store {root}; "
                            "only models copied there by `sentiment models publish` are served (republish it, or "
                            "set SENTIMENT_REGISTRY__STORE_DIR to the store it was published to)")
    return real


# --- reads --------------------------------------------------------------------------------------------

def production(engine: Engine, store: Path) -> ModelRef | None:
    """The production version (one indexed row lookup: workers call this every few seconds).

    Its artifact is checked to lie inside ``store`` (the model store) before a loader sees it.
    """
    with engine.connect() as conn:
        ref = _production(conn)
    return ModelRef(ref.version, contained(ref.version, ref.artifact_dir, store)) if ref else None


def production_record(engine: Engine) -> ModelRef | None:
    """The production row as written, its artifact unchecked: for decisions and names, never for loading."""
    with engine.connect() as conn:
        return _production(conn)


def _production(conn: Connection) -> ModelRef | None:
    row = conn.execute(select(model_version.c.version, model_version.c.artifact_dir)
                       .where(model_version.c.stage == "production")).first()
    return ModelRef(row.version, Path(row.artifact_dir)) if row else None


def get_version(engine: Engine, version: str) -> VersionInfo:
    found = [v for v in list_versions(engine, version) if v.version == version]
    if not found:
        raise RegistryError(f"no published model version {version!r}; `sentiment models list` shows them, "
                            "`sentiment models publish RUN_DIR` adds one")
    return found[0]


def list_versions(engine: Engine, only: str | None = None, metric: str = "macro_f1") -> list[VersionInfo]:
    """Every version (newest first) with its score on the evaluation set it was published with."""
    mv, ev = model_version, model_evaluation
    query = (select(mv, ev.c.metrics)
             .outerjoin(ev, and_(ev.c.version == mv.c.version, ev.c.eval_set == mv.c.eval_set))
             .order_by(mv.c.created_at.desc(), mv.c.version))
    if only is not None:
        query = query.where(mv.c.version == only)
    with engine.connect() as conn:
        return [VersionInfo(r.version, r.stage, Path(r.artifact_dir), r.run_id, r.base_model, r.eval_set,
                            (r.metrics or {}).get(metric), r.created_at, r.promoted_at)
                for r in conn.execute(query)]


def evaluation(engine: Engine, version: str, eval_set: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        return conn.execute(select(model_evaluation.c.metrics).where(
            model_evaluation.c.version == version, model_evaluation.c.eval_set == eval_set)).scalar()


def decisions(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The latest promotion decisions and rollbacks, newest first."""
    pd = promotion_decision
    with engine.connect() as conn:
        rows = conn.execute(select(pd).order_by(pd.c.decided_at.desc(), pd.c.id.desc()).limit(limit))
        return [dict(r._mapping) for r in rows]


def save_evaluation(engine: Engine, version: str, eval_set: str, metrics: dict[str, Any]) -> None:
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    stmt = pg_insert(model_evaluation).values(version=version, eval_set=eval_set, metrics=metrics)
    stmt = stmt.on_conflict_do_update(index_elements=["version", "eval_set"],
                                      set_={"metrics": stmt.excluded.metrics, "evaluated_at": func.now()})
    with engine.begin() as conn:
        conn.execute(stmt)


def score(engine: Engine, ref: ModelRef, eval_set: str, metric: str, evaluate: Evaluator, store: Path) -> float:
    """The version's metric on the set: stored if known, else evaluated now (inside ``store`` only) and stored."""
    metrics = evaluation(engine, ref.version, eval_set)
    if metrics is None:
        artifact = contained(ref.version, ref.artifact_dir, store)
        if not is_model_dir(artifact):
            raise RegistryError(f"{ref.version}: artifact {ref.artifact_dir} is missing, so it cannot be scored on "
                                f"{eval_set!r}; restore the model store or promote with --force")
        log.info("scoring %s on %s", ref.version, eval_set)
        metrics = evaluate(artifact, eval_set)
        save_evaluation(engine, ref.version, eval_set, metrics)
    if metric not in metrics:
        raise RegistryError(f"metric {metric!r} unknown; use one of {', '.join(METRICS)}")
    return float(metrics[metric])


# --- writes -------------------------------------------------------------------------------------------

def _model_dir(path: Path) -> Path:
    """A run directory (with model/) or a model directory itself, with nothing but files and folders below it."""
    model_dir = find_model_dir(path)
    _refuse_links(model_dir, path)
    return model_dir


def _refuse_links(model_dir: Path, run_dir: Path) -> None:
    """Fail before anything is read if the model directory holds a symlink or anything but files and folders.

    The path the user named may itself be a link (``runs/latest``); nothing below it may be one.
    """
    if model_dir != run_dir and model_dir.is_symlink():
        raise _not_regular(model_dir, "is a symbolic link")
    for folder, dirs, files in os.walk(model_dir):  # does not follow links to folders
        for name in dirs + files:
            entry = Path(folder) / name
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise _not_regular(entry, "is a symbolic link")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _not_regular(entry, "is not a regular file")


def _not_regular(entry: Path, what: str) -> RegistryError:
    return RegistryError(f"{entry} {what}; publish copies regular files only: replace it with the file it stands "
                         "for, or remove it, and publish again")


def _copy_regular(src: Path, dst: Path) -> None:
    """Copy a model directory, refusing links and special files even if one appears while copying.

    Each entry is opened with O_NOFOLLOW relative to its folder's descriptor and checked with fstat, so
    a file swapped for a link (say to a system file) after ``_refuse_links`` is never read into the store.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

    def copy_dir(dir_fd: int, shown: Path, out: Path) -> None:
        out.mkdir()
        with os.scandir(dir_fd) as it:
            names = sorted(e.name for e in it)
        for name in names:
            try:
                fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as e:  # ELOOP: a symbolic link
                raise _not_regular(shown / name, "is a symbolic link" if e.errno == errno.ELOOP
                                   else f"cannot be opened ({e.strerror})") from None
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISDIR(mode):
                    copy_dir(fd, shown / name, out / name)
                elif stat.S_ISREG(mode):
                    with open(fd, "rb", closefd=False) as reader, open(out / name, "xb") as writer:
                        shutil.copyfileobj(reader, writer, 1 << 20)
                else:
                    raise _not_regular(shown / name, "is not a regular file")
            finally:
                os.close(fd)

    top = os.open(src, flags | os.O_DIRECTORY)
    try:
        copy_dir(top, src, dst)
    finally:
        os.close(top)


def publish(engine: Engine, run_dir: Path, store_dir: Path, eval_set: str, version: str | None = None, *,
            evaluate: Evaluator) -> VersionInfo:
    """Copy a run's model into the store, score it on ``eval_set`` and register it as a candidate."""
    src = _model_dir(Path(run_dir).resolve())  # the path named may be a link (runs/latest); nothing below it
    run = RunInfo.read(src, strict=True)
    version = version or run.run_id or (src.parent.name if src.name == "model" else src.name)
    if not _VERSION_RE.match(version):
        raise RegistryError(f"version {version!r}: use letters, digits, '.', '_' or '-' (pass --version)")
    with engine.connect() as conn:
        if conn.execute(select(model_version.c.stage).where(model_version.c.version == version)).first():
            raise RegistryError(f"version {version!r} is already published; pass --version to publish it again "
                                "under another name")
    store_dir.mkdir(parents=True, exist_ok=True)
    target = store_dir / version
    if target.exists():
        raise RegistryError(f"{target} exists but is not registered (an interrupted publish?); remove it and retry")
    tmp = store_dir / f".tmp-{version}-{uuid.uuid4().hex[:6]}"
    try:
        _copy_regular(src, tmp)
        tmp.rename(target)  # atomic: the store never holds half a model under a version's name
        metrics = evaluate(target, eval_set)
        with engine.begin() as conn:
            conn.execute(insert(model_version).values(
                version=version, artifact_dir=str(target.resolve()), run_id=run.run_id,
                base_model=run.base_model, eval_set=eval_set, training_metrics=run.test_metrics))
            conn.execute(insert(model_evaluation).values(version=version, eval_set=eval_set, metrics=metrics))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        raise
    log.info("published %s -> %s (%s on %s: %s)", version, target, "macro_f1", eval_set, metrics.get("macro_f1"))
    return get_version(engine, version)


def known_score(engine: Engine, version: str, eval_set: str, metric: str) -> float | None:
    """The stored score, or None (nothing is computed)."""
    metrics = evaluation(engine, version, eval_set)
    return float(metrics[metric]) if metrics and metric in metrics else None


def record_promotion(engine: Engine, decision: Decision) -> Decision:
    """Apply a promotion decision (switch stages if promoted) and record it, in one locked transaction.

    The decision was made on the production version it names; if production changed meanwhile (another
    promotion while scoring), nothing is switched and the caller is told to decide again.
    """
    with engine.begin() as conn:
        conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        now_prod = _production(conn)
        if (now_prod.version if now_prod else None) != decision.production_before:
            raise RegistryError(f"production changed to {now_prod.version if now_prod else None} while scoring; "
                                "run the promotion again")
        if decision.promoted:
            _switch(conn, decision.production_before, decision.candidate)
        _record(conn, decision)
    log.info("promotion of %s: %s (%s)", decision.candidate, "promoted" if decision.promoted else "rejected",
             decision.reason)
    return decision


def rollback(engine: Engine) -> Decision:
    """Archive production and bring back the version it replaced.

    Productions form a stack: a promotion pushes, a rollback pops, so repeated rollbacks walk back
    through the history (replayed from the recorded decisions, which are few).
    """
    pd = promotion_decision
    with engine.begin() as conn:
        conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        current = _production(conn)
        if current is None:
            raise RegistryError("no production model to roll back; `sentiment models promote VERSION` sets one")
        stack: list[str] = []
        for candidate, action in conn.execute(select(pd.c.candidate, pd.c.action).where(pd.c.promoted)
                                              .order_by(pd.c.id)):
            if action == "promote":
                stack.append(candidate)
            elif stack:
                stack.pop()
        if len(stack) < 2 or stack[-1] != current.version:
            raise RegistryError(f"{current.version} replaced no earlier production version; to serve another one, "
                                "`sentiment models promote VERSION --force`")
        previous = stack[-2]
        _switch(conn, current.version, previous)
        decision = Decision("rollback", previous, current.version, True, f"rollback from {current.version}")
        _record(conn, decision)
    log.info("rolled back %s -> %s", current.version, previous)
    return decision


def _switch(conn: Connection, old: str | None, new: str) -> None:
    """Archive the old production first: the partial unique index allows one production row at a time."""
    if old is not None:
        conn.execute(update(model_version).where(model_version.c.version == old).values(stage="archived"))
    conn.execute(update(model_version).where(model_version.c.version == new)
                 .values(stage="production", promoted_at=func.now()))


def _record(conn: Connection, d: Decision) -> None:
    conn.execute(insert(promotion_decision).values(
        action=d.action, candidate=d.candidate, production_before=d.production_before, eval_set=d.eval_set,
        metric=d.metric, candidate_score=d.candidate_score, production_score=d.production_score, margin=d.margin,
        forced=d.forced, promoted=d.promoted, reason=d.reason))
