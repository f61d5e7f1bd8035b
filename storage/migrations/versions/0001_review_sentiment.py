"""review_sentiment table and the views behind the common questions.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

VIEWS = {
    # Share of each label per hour and source (event time, UTC).
    "sentiment_hourly": """
        SELECT date_trunc('hour', created_at) AS hour, source, label, count(*) AS reviews,
               count(*)::double precision
                 / sum(count(*)) OVER (PARTITION BY date_trunc('hour', created_at), source) AS share
        FROM review_sentiment GROUP BY 1, 2, 3""",
    # The same over all sources.
    "sentiment_hourly_total": """
        SELECT date_trunc('hour', created_at) AS hour, label, count(*) AS reviews,
               count(*)::double precision
                 / sum(count(*)) OVER (PARTITION BY date_trunc('hour', created_at)) AS share
        FROM review_sentiment GROUP BY 1, 2""",
    # Negative reviews of the last 24 hours, most confident first.
    "recent_negative": """
        SELECT review_id, created_at, source, p_negative, model_version, text
        FROM review_sentiment
        WHERE label = 'negative' AND created_at > now() - interval '24 hours'
        ORDER BY p_negative DESC, created_at DESC""",
}


def upgrade() -> None:
    op.create_table(
        "review_sentiment",
        sa.Column("review_id", sa.Text, primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("score", sa.REAL, nullable=False),
        sa.Column("p_negative", sa.REAL, nullable=False),
        sa.Column("p_neutral", sa.REAL, nullable=False),
        sa.Column("p_positive", sa.REAL, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("metadata", JSONB, nullable=False, server_default="{}"),
        sa.Column("kafka_topic", sa.Text),
        sa.Column("kafka_partition", sa.Integer),
        sa.Column("kafka_offset", sa.BigInteger),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("label IN ('negative', 'neutral', 'positive')", name="review_sentiment_label_check"),
    )
    op.create_index("review_sentiment_created_at", "review_sentiment", ["created_at"])
    op.create_index("review_sentiment_source_created_at", "review_sentiment", ["source", "created_at"])
    op.create_index("review_sentiment_model_version", "review_sentiment", ["model_version"])
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("review_sentiment")
