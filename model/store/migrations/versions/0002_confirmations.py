"""confirmations (the reader's read, or the truth, referring to a result), the audit log, and each result's guard
scores.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from model.store.migrations.append_only import drop_refusal, refuse_updates

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("results", sa.Column("guard_scores", sa.JSON))
    op.create_table(
        "confirmations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("result_id", sa.String(36), sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_confirmations_result_id", "confirmations", ["result_id"])
    refuse_updates("confirmations")
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON),
    )


def downgrade() -> None:
    op.drop_table("audit")
    drop_refusal("confirmations")
    op.drop_table("confirmations")
    drop_refusal("results")  # SQLite drops a column by copying the table, which would lose the trigger anyway
    with op.batch_alter_table("results") as batch:
        batch.drop_column("guard_scores")
    refuse_updates("results")
