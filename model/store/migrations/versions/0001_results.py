"""results: one append-only row per analysis.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

from model.store.migrations.append_only import drop_refusal, refuse_updates

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("input_sha256", sa.String(64)),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("bundle", sa.String(128), nullable=False),
        sa.Column("bundle_version", sa.String(64)),
        sa.Column("bundle_members", sa.JSON),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("classes", sa.JSON),
        sa.Column("site", sa.String(64)),
        sa.Column("site_sha256", sa.String(64)),
        sa.Column("operating_point", sa.String(32)),
        sa.Column("threshold", sa.Float),
        sa.Column("thresholds", sa.JSON),
        sa.Column("probability_raw", sa.Float),
        sa.Column("probability", sa.Float),
        sa.Column("probabilities", sa.JSON),
        sa.Column("label", sa.JSON),
        sa.Column("finding", sa.String(16)),
        sa.Column("warnings", sa.JSON),
        sa.Column("error", sa.String(64)),
        sa.Column("latency_ms", sa.Float),
        sa.Column("meta", sa.JSON),
    )
    op.create_index("ix_results_created_at", "results", ["created_at"])
    op.create_index("ix_results_input_sha256", "results", ["input_sha256"])
    op.create_index("ix_results_sop_instance_uid", "results", ["sop_instance_uid"])
    refuse_updates("results")


def downgrade() -> None:
    drop_refusal("results")
    op.drop_table("results")
