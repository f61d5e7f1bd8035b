"""Label corrections by people: one row per correction, never touching the model's own row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Plain SQL works as well as `sentiment feedback`: ``INSERT INTO review_feedback (review_id, label, author)
VALUES ('r-1', 'negative', 'ana')``. A trigger fills ``previous_label`` (the label being replaced: the
latest correction of that review, else the model's label) and ``author`` defaults to the database user.
The ``review_label`` view gives every review with its current label (the latest correction wins).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LABEL_CHECK = "IN ('negative', 'neutral', 'positive')"


def upgrade() -> None:
    op.create_table(
        "review_feedback",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("review_id", sa.Text, sa.ForeignKey("review_sentiment.review_id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("previous_label", sa.Text, nullable=False),
        sa.Column("author", sa.Text, nullable=False, server_default=sa.text("current_user")),
        sa.Column("note", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(f"label {LABEL_CHECK}", name="review_feedback_label_check"),
        sa.CheckConstraint(f"previous_label {LABEL_CHECK}", name="review_feedback_previous_label_check"),
        sa.CheckConstraint("length(btrim(author)) > 0", name="review_feedback_author_check"),
    )
    op.create_index("review_feedback_review", "review_feedback", ["review_id", "id"])
    op.execute("""
        CREATE FUNCTION review_feedback_fill() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.previous_label IS NULL THEN
                NEW.previous_label := COALESCE(
                    (SELECT f.label FROM review_feedback f WHERE f.review_id = NEW.review_id
                     ORDER BY f.id DESC LIMIT 1),
                    (SELECT r.label FROM review_sentiment r WHERE r.review_id = NEW.review_id));
            END IF;
            RETURN NEW;
        END $$""")
    op.execute("""
        CREATE TRIGGER review_feedback_fill BEFORE INSERT ON review_feedback
        FOR EACH ROW EXECUTE FUNCTION review_feedback_fill()""")
    op.execute("""
        CREATE VIEW review_label AS
        SELECT r.review_id, r.text, r.source, r.created_at, r.label AS model_label, r.model_version,
               COALESCE(f.label, r.label) AS label, f.label IS NOT NULL AS corrected,
               f.author AS corrected_by, f.created_at AS corrected_at
        FROM review_sentiment r
        LEFT JOIN LATERAL (SELECT label, author, created_at FROM review_feedback
                           WHERE review_id = r.review_id ORDER BY id DESC LIMIT 1) f ON true""")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS review_label")
    op.drop_table("review_feedback")
    op.execute("DROP FUNCTION IF EXISTS review_feedback_fill()")
