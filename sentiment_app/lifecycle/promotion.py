"""Publish, promote and roll back: the promotion policy, and the ``current`` pointer kept in step.

Promotion is gated: the candidate and the production model are scored on the *same* named evaluation
set (scores are kept per version and set, so each is computed once, by ``eval_sets.evaluator``: the
serving predictor) and the candidate goes live only if ``candidate >= production + margin``, unless
forced. Every decision, promoted or not, is recorded. After a promotion or a rollback ``models_dir/current``
points at the new production artifact (``stream.serving.point_current``), so a process that cannot reach
the registry still serves what the workers serve. Only artifacts inside the model store are scored or
pointed at (``storage.registry.contained``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine

from sentiment_app.lifecycle.eval_sets import eval_spec, evaluator
from storage import registry
from storage.registry import Decision, Evaluator, ModelRef, RegistryError, VersionInfo
from stream.serving import point_current
from stream.settings import Settings

log = logging.getLogger(__name__)


def publish(settings: Settings, engine: Engine, run_dir: Path, eval_set: str | None = None,
            version: str | None = None, evaluate: Evaluator | None = None) -> VersionInfo:
    """Copy a run's model into the model store, score it on ``eval_set``, register it as a candidate."""
    eval_set = eval_set or settings.registry.eval_set
    eval_spec(eval_set)  # fail before copying if the set does not exist
    return registry.publish(engine, run_dir, settings.model_store(), eval_set, version,
                            evaluate=evaluate or evaluator(settings.model))


def decide(engine: Engine, version: str, *, store: Path, eval_set: str | None = None, metric: str = "macro_f1",
           margin: float = 0.0, force: bool = False, evaluate: Evaluator) -> Decision:
    """The gate: score both on the same set (missing scores computed now, inside ``store`` only) and decide;
    nothing is switched. A candidate outside the store is refused before anything changes, even when forced."""
    if metric not in registry.METRICS:
        raise RegistryError(f"metric {metric!r} unknown; use one of {', '.join(registry.METRICS)}")
    cand = registry.get_version(engine, version)
    if cand.stage == "production":
        raise RegistryError(f"{version} is already production")
    registry.contained(version, cand.artifact_dir, store)
    eval_set = eval_set or cand.eval_set
    prod = registry.production_record(engine)  # its artifact is checked by score(), where it is loaded
    if force:  # an operator's override: use the scores we have, compute nothing
        cand_score = registry.known_score(engine, cand.version, eval_set, metric)
        prod_score = registry.known_score(engine, prod.version, eval_set, metric) if prod else None
    else:
        cand_score = registry.score(engine, ModelRef(cand.version, cand.artifact_dir), eval_set, metric, evaluate,
                                    store)
        prod_score = registry.score(engine, prod, eval_set, metric, evaluate, store) if prod else None

    if prod is None:
        promoted, reason = True, "no production model yet"
    elif prod_score is not None and cand_score is not None and cand_score >= prod_score + margin:
        promoted, reason = True, f"{metric} {cand_score:.4f} >= {prod_score:.4f} + margin {margin:g}"
    elif force:
        promoted, reason = True, "forced" + (f": {metric} {cand_score:.4f} vs {prod_score:.4f}"
                                             if cand_score is not None and prod_score is not None else "")
    else:
        promoted, reason = False, f"{metric} {cand_score:.4f} < {prod_score:.4f} + margin {margin:g}"
    return Decision("promote", version, prod.version if prod else None, promoted, reason, eval_set, metric,
                    cand_score, prod_score, margin, force)


def promote(settings: Settings, engine: Engine, version: str, *, eval_set: str | None = None,
            metric: str | None = None, margin: float | None = None, force: bool = False,
            evaluate: Evaluator | None = None) -> Decision:
    """Gate ``version`` (scoring happens before the transaction: it can take a minute), record the decision,
    and on promotion point ``current`` at it. ``metric``/``margin`` default to ``settings.registry``."""
    decision = decide(engine, version, store=settings.model_store(), eval_set=eval_set,
                      metric=metric or settings.registry.metric,
                      margin=settings.registry.margin if margin is None else margin, force=force,
                      evaluate=evaluate or evaluator(settings.model))
    registry.record_promotion(engine, decision)
    if decision.promoted:
        _point_current(settings, engine, version)
    return decision


def rollback(settings: Settings, engine: Engine) -> Decision:
    """Archive production, bring back the version it replaced, and point ``current`` at it."""
    decision = registry.rollback(engine)
    _point_current(settings, engine, decision.candidate)
    return decision


def _point_current(settings: Settings, engine: Engine, version: str) -> None:
    """``current`` at the version's artifact, only if it lies inside the model store (``classify`` and the
    dashboard load what it points at)."""
    artifact = registry.contained(version, registry.get_version(engine, version).artifact_dir,
                                  settings.model_store())
    point_current(settings.models_dir, artifact)
