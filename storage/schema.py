"""The Postgres schema as SQLAlchemy Core tables.

Alembic migrations (``storage/migrations``) create and evolve it; this module only describes it so
that reads and writes are built by SQLAlchemy, never by string formatting. The registry, feedback and
shadow tables are defined beside their queries on the same ``metadata``; ``storage.tables`` imports them
all, which is what Alembic compares against (``alembic check``).
"""

from __future__ import annotations

from sqlalchemy import (
    REAL,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

review_sentiment = Table(
    "review_sentiment",
    metadata,
    Column("review_id", Text, primary_key=True),
    Column("text", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), primary_key=True),  # the partition key (months)
    Column("label", Text, nullable=False),
    Column("score", REAL, nullable=False),
    Column("p_negative", REAL, nullable=False),
    Column("p_neutral", REAL, nullable=False),
    Column("p_positive", REAL, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("metadata", JSONB, nullable=False, server_default="{}"),
    Column("kafka_topic", Text),
    Column("kafka_partition", Integer),
    Column("kafka_offset", BigInteger),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("label IN ('negative', 'neutral', 'positive')", name="review_sentiment_label_check"),
    Index("review_sentiment_created_at", "created_at"),
    Index("review_sentiment_source_created_at", "source", "created_at"),
    Index("review_sentiment_model_version", "model_version"),
)

# The claim of a review id (migration 0006): unique across review_sentiment's partitions, one per row.
review_key = Table(
    "review_key",
    metadata,
    Column("review_id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("review_key_created_at", "created_at"),
)
