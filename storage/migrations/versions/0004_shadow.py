"""Shadow evaluation: a candidate labels a share of live traffic beside production, without writing labels.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

``shadow_deployment``: which candidate shadows, on what share of reviews, from when to when (at most one
active row: a partial unique index, which is also the index behind the workers' poll).
``shadow_prediction``: production's and the candidate's label of each shadowed review; the primary key
(candidate, review_id) makes a replayed batch insert nothing twice. ``shadow_batch``: per micro-batch,
how long production and the candidate took (the latency cost), keyed by the batch's first record.
Nothing here touches ``review_sentiment``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LABEL_CHECK = "IN ('negative', 'neutral', 'positive')"


def upgrade() -> None:
    op.create_table(
        "shadow_deployment",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("candidate", sa.Text, sa.ForeignKey("model_version.version"), nullable=False),
        sa.Column("share", sa.REAL, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("share > 0 AND share <= 1", name="shadow_deployment_share_check"),
    )
    # At most one active shadow (all active rows would share the indexed value true).
    op.execute("CREATE UNIQUE INDEX shadow_deployment_one_active ON shadow_deployment ((stopped_at IS NULL)) "
               "WHERE stopped_at IS NULL")
    op.create_table(
        "shadow_prediction",
        sa.Column("candidate", sa.Text, sa.ForeignKey("model_version.version", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("review_id", sa.Text, primary_key=True),
        sa.Column("production_version", sa.Text, nullable=False),
        sa.Column("production_label", sa.Text, nullable=False),
        sa.Column("candidate_label", sa.Text, nullable=False),
        sa.Column("candidate_score", sa.REAL, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(f"production_label {LABEL_CHECK}", name="shadow_prediction_production_label_check"),
        sa.CheckConstraint(f"candidate_label {LABEL_CHECK}", name="shadow_prediction_candidate_label_check"),
    )
    op.create_table(
        "shadow_batch",
        sa.Column("candidate", sa.Text, sa.ForeignKey("model_version.version", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("kafka_topic", sa.Text, primary_key=True),
        sa.Column("kafka_partition", sa.Integer, primary_key=True),
        sa.Column("kafka_offset", sa.BigInteger, primary_key=True),  # the batch's first labelled record
        sa.Column("production_version", sa.Text, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),  # labelled by production
        sa.Column("shadowed", sa.Integer, nullable=False),  # of which also labelled by the candidate
        sa.Column("production_ms", sa.Float, nullable=False),
        sa.Column("candidate_ms", sa.Float, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("shadow_batch")
    op.drop_table("shadow_prediction")
    op.drop_table("shadow_deployment")
