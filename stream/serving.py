"""Which model serves: the one rule every process asks (worker, ``classify``, dashboard, ``status``).

The pinned ``SENTIMENT_MODEL__DIR``, else the registry's production version, else ``models_dir/current``
(the demo's model, or the last production version a promotion pointed it at). Promote, rollback, refresh
and the demo move the ``current`` link with ``point_current``: an atomic rename over the old link.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from sentiment_model.artifact import is_model_dir, model_version
from sentiment_model.errors import ModelNotFoundError
from storage.db import get_engine
from storage.registry import ModelRef
from stream.settings import Settings

log = logging.getLogger(__name__)


def current_link(settings: Settings) -> Path:
    return settings.models_dir / "current"


def resolve_model_dir(settings: Settings) -> Path:
    """The pinned model, else the one at ``models_dir/current`` (the registry is not asked here)."""
    if settings.model.dir is not None:
        return settings.model.dir
    current = current_link(settings)
    if is_model_dir(current):
        return current
    raise ModelNotFoundError(
        f"no model configured and none at {current}: run `make demo` (trains a small one), or "
        "`sentiment train configs/baseline.yaml`, or set SENTIMENT_MODEL__DIR to a Hugging Face model dir"
    )


def registry_production(engine: Engine, store: Path) -> ModelRef | None:
    """The registry's production version whose artifact is inside ``store`` and readable here, else None.

    A production row naming an artifact outside the store is refused with one warning, like one that is not
    readable here: the caller falls back (a worker keeps serving, or starts on ``current``).
    """
    from storage import registry

    try:
        ref = registry.production(engine, store)
    except registry.RegistryError as e:
        log.warning("production model refused: %s", e)
        return None
    if ref is not None and not is_model_dir(ref.artifact_dir):
        log.warning("production model %s: %s is not readable on this machine (is the model store shared?)",
                    ref.version, ref.artifact_dir)
        return None
    return ref


def production_or_none(settings: Settings) -> ModelRef | None:
    """``registry_production``, or None when there is no registry yet or Postgres cannot be asked."""
    try:
        return registry_production(get_engine(settings.postgres.url.get_secret_value()), settings.model_store())
    except SQLAlchemyError:
        return None


def serving_model(settings: Settings, production: Callable[[], ModelRef | None] | None = None
                  ) -> tuple[ModelRef, str]:
    """The model a worker started now would serve, and where it came from (pinned, registry or current).

    ``production`` returns the registry's production version or None (default: ``production_or_none``);
    the worker passes one that retries while Postgres is starting.
    """
    if settings.model.dir is None:
        ref = (production or (lambda: production_or_none(settings)))()
        if ref is not None:
            return ref, "registry"
    model_dir = resolve_model_dir(settings)
    return (ModelRef(settings.model.version or model_version(model_dir), model_dir),
            "current" if settings.model.dir is None else "pinned")


def point_current(models_dir: Path, artifact_dir: Path) -> Path | None:
    """Point ``models_dir/current`` at ``artifact_dir`` atomically (a new link renamed over the old one).

    Returns the link, or None when ``current`` is a real directory (left alone: someone put a model there).
    """
    current = models_dir / "current"
    if current.exists() and not current.is_symlink():
        log.warning("%s is a directory, not a link; left as it is", current)
        return None
    current.parent.mkdir(parents=True, exist_ok=True)
    tmp = current.with_name(f".current-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    tmp.symlink_to(Path(artifact_dir).resolve(), target_is_directory=True)
    tmp.replace(current)  # rename(2): readers see the old link or the new one, never none
    return current
