"""Shadow evaluation: every read and write of shadow deployments, shadow predictions and their cost.

A *shadow deployment* runs a published candidate beside production on a share of live traffic: workers
that follow the registry label each batch with production as usual (rows in ``review_sentiment``, counts
in Redis) and then label the sampled reviews again with the candidate, keeping only the comparison here
(``shadow_prediction``: both labels; ``shadow_batch``: both models' time). The candidate's labels are
never stored as review labels and never counted in the trends.

Which reviews are shadowed is decided by the review id alone (``storage.sampling.in_sample``), so a
replayed batch shadows exactly the reviews it shadowed the first time, every worker agrees without
talking to the others, and a larger share shadows a superset of a smaller one. ``shadow_batch`` keeps
one row per labelled batch (keyed by its first record), replays included: its rows are timing samples,
not a count of reviews.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy import (
    REAL,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from sentiment_model.artifact import is_model_dir
from sentiment_model.labels import LABELS
from storage import registry
from storage.schema import metadata

_LOCK_KEY = 0x5E47_0004  # pg advisory lock: one shadow start / stop at a time

shadow_deployment = Table(
    "shadow_deployment", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("candidate", Text, ForeignKey("model_version.version"), nullable=False),
    Column("share", REAL, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("stopped_at", DateTime(timezone=True)),
    # At most one active shadow (all active rows would share the indexed value true).
    Index("shadow_deployment_one_active", text("(stopped_at IS NULL)"), unique=True,
          postgresql_where=text("stopped_at IS NULL")),
)
shadow_prediction = Table(
    "shadow_prediction", metadata,
    Column("candidate", Text, ForeignKey("model_version.version", ondelete="CASCADE"), primary_key=True),
    Column("review_id", Text, primary_key=True),
    Column("production_version", Text, nullable=False),
    Column("production_label", Text, nullable=False),
    Column("candidate_label", Text, nullable=False),
    Column("candidate_score", REAL, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
shadow_batch = Table(
    "shadow_batch", metadata,
    Column("candidate", Text, ForeignKey("model_version.version", ondelete="CASCADE"), primary_key=True),
    Column("kafka_topic", Text, primary_key=True),
    Column("kafka_partition", Integer, primary_key=True),
    Column("kafka_offset", BigInteger, primary_key=True),
    Column("production_version", Text, nullable=False),
    Column("events", Integer, nullable=False),
    Column("shadowed", Integer, nullable=False),
    Column("production_ms", Float, nullable=False),
    Column("candidate_ms", Float, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


@dataclass(frozen=True)
class ShadowDeployment:
    id: int
    candidate: str
    share: float
    started_at: datetime
    stopped_at: datetime | None = None
    artifact_dir: Path | None = None


@dataclass(frozen=True)
class ShadowPrediction:
    review_id: str
    production_version: str
    production_label: str
    candidate_label: str
    candidate_score: float


@dataclass(frozen=True)
class ShadowBatch:
    """One micro-batch's shadow work: the key is the batch's first labelled record."""

    candidate: str
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    production_version: str
    events: int
    shadowed: int
    production_ms: float
    candidate_ms: float


# --- deployments ----------------------------------------------------------------------------------------

def _deployment(row) -> ShadowDeployment:
    m = row._mapping
    artifact = m.get("artifact_dir")
    return ShadowDeployment(m["id"], m["candidate"], float(m["share"]), m["started_at"], m["stopped_at"],
                            Path(artifact) if artifact else None)


def active(engine: Engine, store: Path) -> ShadowDeployment | None:
    """The active shadow deployment with its artifact (one indexed row: workers call this every few seconds).

    The artifact is checked to lie inside ``store`` (the model store) before a loader sees it.
    """
    sd, mv = shadow_deployment, registry.model_version
    query = (select(sd, mv.c.artifact_dir).join(mv, mv.c.version == sd.c.candidate)
             .where(sd.c.stopped_at.is_(None)))
    with engine.connect() as conn:
        row = conn.execute(query).first()
    dep = _deployment(row) if row else None
    if dep is None or dep.artifact_dir is None:
        return dep
    return replace(dep, artifact_dir=registry.contained(dep.candidate, dep.artifact_dir, store))


def deployments(engine: Engine, candidate: str | None = None) -> list[ShadowDeployment]:
    """Shadow deployments, newest first."""
    sd = shadow_deployment
    query = select(sd).order_by(sd.c.started_at.desc(), sd.c.id.desc())
    if candidate is not None:
        query = query.where(sd.c.candidate == candidate)
    with engine.connect() as conn:
        return [_deployment(r) for r in conn.execute(query)]


def start(engine: Engine, version: str, share: float) -> tuple[ShadowDeployment, ShadowDeployment | None]:
    """Shadow ``version`` on ``share`` of the reviews; an active shadow is stopped first. Returns (new, replaced)."""
    if not 0.0 < share <= 1.0:
        raise registry.RegistryError(f"share {share:g}: give a fraction of the traffic, 0 < share <= 1")
    info = registry.get_version(engine, version)  # raises when not published
    if info.stage == "production":
        raise registry.RegistryError(f"{version} is production already; shadow a candidate against it instead")
    if not is_model_dir(info.artifact_dir):
        raise registry.RegistryError(f"{version}: artifact {info.artifact_dir} is missing; restore the model store")
    sd = shadow_deployment
    with engine.begin() as conn:
        conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        old = conn.execute(update(sd).where(sd.c.stopped_at.is_(None)).values(stopped_at=func.now())
                           .returning(*sd.c)).first()
        new = conn.execute(insert(sd).values(candidate=version, share=share).returning(*sd.c)).one()
    return _deployment(new), (_deployment(old) if old else None)


def stop(engine: Engine) -> ShadowDeployment | None:
    """Stop the active shadow deployment; None when there was none."""
    sd = shadow_deployment
    with engine.begin() as conn:
        conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        row = conn.execute(update(sd).where(sd.c.stopped_at.is_(None)).values(stopped_at=func.now())
                           .returning(*sd.c)).first()
    return _deployment(row) if row else None


# --- worker writes ----------------------------------------------------------------------------------------

def record(engine: Engine, candidate: str, predictions: Sequence[ShadowPrediction], batch: ShadowBatch | None
           ) -> int:
    """Store one batch's shadow results in one transaction; a replay inserts nothing twice.

    Returns how many predictions were new (not already recorded by an earlier delivery).
    """
    inserted = 0
    with engine.begin() as conn:
        if predictions:
            stmt = (pg_insert(shadow_prediction)
                    .values([{"candidate": candidate, "review_id": p.review_id,
                              "production_version": p.production_version, "production_label": p.production_label,
                              "candidate_label": p.candidate_label, "candidate_score": p.candidate_score}
                             for p in predictions])
                    .on_conflict_do_nothing(index_elements=["candidate", "review_id"])
                    .returning(shadow_prediction.c.review_id))
            inserted = len(conn.execute(stmt).all())
        if batch is not None:
            conn.execute(pg_insert(shadow_batch).values(**asdict(batch)).on_conflict_do_nothing(
                index_elements=["candidate", "kafka_topic", "kafka_partition", "kafka_offset"]))
    return inserted


# --- comparison -------------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """How a shadowed candidate compared with production on live traffic."""

    candidate: str
    confusion: dict[tuple[str, str], int]  # (production label, candidate label) -> reviews
    production_versions: dict[str, int] = field(default_factory=dict)  # production version -> reviews
    batches: int = 0
    batch_events: int = 0  # events production labelled in those batches
    batch_shadowed: int = 0  # of which the candidate labelled
    production_ms: float = 0.0
    candidate_ms: float = 0.0

    @property
    def events(self) -> int:
        return sum(self.confusion.values())

    @property
    def agreed(self) -> int:
        return sum(self.confusion.get((c, c), 0) for c in LABELS)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.events if self.events else None

    def matrix(self) -> list[list[int]]:
        """Rows: production's label, columns: the candidate's, both in ``LABELS`` order."""
        return [[self.confusion.get((p, c), 0) for c in LABELS] for p in LABELS]

    def per_class(self) -> dict[str, dict[str, float | int | None]]:
        """Per label: how often production and the candidate chose it, and the agreement on it.

        ``agreement``: of the reviews production labelled so, the share the candidate labelled so too;
        ``candidate_agreement``: the same seen from the candidate's side.
        """
        out: dict[str, dict[str, float | int | None]] = {}
        for c in LABELS:
            prod = sum(self.confusion.get((c, x), 0) for x in LABELS)
            cand = sum(self.confusion.get((x, c), 0) for x in LABELS)
            both = self.confusion.get((c, c), 0)
            out[c] = {"production": prod, "candidate": cand, "agreement": both / prod if prod else None,
                      "candidate_agreement": both / cand if cand else None}
        return out

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa: agreement beyond what the two label mixes would give by chance."""
        n = self.events
        if not n:
            return None
        pc = self.per_class()
        expected = sum(int(pc[c]["production"]) * int(pc[c]["candidate"]) for c in LABELS) / n / n
        return None if expected >= 1.0 else (self.agreed / n - expected) / (1.0 - expected)

    @property
    def production_ms_per_event(self) -> float | None:
        return self.production_ms / self.batch_events if self.batch_events else None

    @property
    def candidate_ms_per_event(self) -> float | None:
        return self.candidate_ms / self.batch_shadowed if self.batch_shadowed else None

    @property
    def latency_ratio(self) -> float | None:
        p, c = self.production_ms_per_event, self.candidate_ms_per_event
        return c / p if p and c is not None else None

    @property
    def added_ms_per_batch(self) -> float | None:
        """What shadowing at this share added to each batch, on average (the candidate's time)."""
        return self.candidate_ms / self.batches if self.batches else None


def default_candidate(engine: Engine) -> str | None:
    """The candidate to compare when none is named: the active shadow's, else the latest one shadowed."""
    found = deployments(engine)
    return found[0].candidate if found else None


def compare(engine: Engine, candidate: str) -> Comparison:
    """The shadow results of ``candidate`` so far: the label confusion with production and the latency cost."""
    sp, sb = shadow_prediction, shadow_batch
    with engine.connect() as conn:
        confusion = {(p, c): n for p, c, n in conn.execute(
            select(sp.c.production_label, sp.c.candidate_label, func.count())
            .where(sp.c.candidate == candidate).group_by(sp.c.production_label, sp.c.candidate_label))}
        versions = {v: n for v, n in conn.execute(
            select(sp.c.production_version, func.count()).where(sp.c.candidate == candidate)
            .group_by(sp.c.production_version))}
        b = conn.execute(select(func.count(), func.coalesce(func.sum(sb.c.events), 0),
                                func.coalesce(func.sum(sb.c.shadowed), 0),
                                func.coalesce(func.sum(sb.c.production_ms), 0.0),
                                func.coalesce(func.sum(sb.c.candidate_ms), 0.0))
                         .where(sb.c.candidate == candidate)).one()
    return Comparison(candidate, confusion, versions, int(b[0]), int(b[1]), int(b[2]), float(b[3]), float(b[4]))


def evaluations(engine: Engine, versions: Sequence[str]) -> dict[tuple[str, str], dict]:
    """The stored offline scores of these versions: (version, eval set) -> metrics."""
    ev = registry.model_evaluation
    with engine.connect() as conn:
        rows = conn.execute(select(ev.c.version, ev.c.eval_set, ev.c.metrics).where(ev.c.version.in_(list(versions))))
        return {(r.version, r.eval_set): r.metrics for r in rows}
