"""Model registry: published model versions, their scores per evaluation set, promotion decisions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_version",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("artifact_dir", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("base_model", sa.Text),
        sa.Column("eval_set", sa.Text, nullable=False),
        sa.Column("training_metrics", JSONB, nullable=False, server_default="{}"),
        sa.Column("stage", sa.Text, nullable=False, server_default="candidate"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("promoted_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("stage IN ('candidate', 'production', 'archived')", name="model_version_stage_check"),
    )
    # At most one production model; also the index behind the worker's "which model?" poll.
    op.create_index("model_version_one_production", "model_version", ["stage"], unique=True,
                    postgresql_where=sa.text("stage = 'production'"))
    op.create_table(
        "model_evaluation",
        sa.Column("version", sa.Text, sa.ForeignKey("model_version.version", ondelete="CASCADE"), primary_key=True),
        sa.Column("eval_set", sa.Text, primary_key=True),
        sa.Column("metrics", JSONB, nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "promotion_decision",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("candidate", sa.Text, sa.ForeignKey("model_version.version"), nullable=False),
        sa.Column("production_before", sa.Text, sa.ForeignKey("model_version.version")),
        sa.Column("eval_set", sa.Text),
        sa.Column("metric", sa.Text),
        sa.Column("candidate_score", sa.Float),
        sa.Column("production_score", sa.Float),
        sa.Column("margin", sa.Float),
        sa.Column("forced", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("promoted", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("action IN ('promote', 'rollback')", name="promotion_decision_action_check"),
    )
    op.create_index("promotion_decision_candidate", "promotion_decision", ["candidate", "decided_at"])


def downgrade() -> None:
    op.drop_table("promotion_decision")
    op.drop_table("model_evaluation")
    op.drop_table("model_version")
