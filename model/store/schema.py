"""The record's tables, as the application reads and writes them. The migrations (model/store/migrations/versions)
create exactly these, one revision at a time; a test checks that the two agree.

- `results`: one row per analysis, never updated (a trigger refuses an UPDATE); only retention deletes.
- `confirmations`: the reader's read, or the truth once known, each its own row referring to a result; the
  latest one counts. Never updated either.
- `audit`: what was done to the record itself (a retention run: when, by whom, how many rows).
"""
from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

HEAD = "0002"
"""The newest migration revision: a database at it needs no upgrade."""

metadata = MetaData()

results = Table(
    "results", metadata,
    Column("id", String(36), primary_key=True),  # a client-made UUID: a replay from the spool is a no-op
    Column("created_at", DateTime, nullable=False),  # UTC
    Column("channel", String(16), nullable=False),
    Column("user", String(64), nullable=False),
    Column("input_sha256", String(64)),
    Column("study_instance_uid", String(64)),
    Column("series_instance_uid", String(64)),
    Column("sop_instance_uid", String(64)),
    Column("bundle", String(128), nullable=False),
    Column("bundle_version", String(64)),
    Column("bundle_members", JSON(none_as_null=True)),  # {member: sha256}
    Column("task", String(16), nullable=False),
    Column("classes", JSON(none_as_null=True)),
    Column("site", String(64)),
    Column("site_sha256", String(64)),
    Column("operating_point", String(32)),
    Column("threshold", Float),
    Column("thresholds", JSON(none_as_null=True)),  # multilabel: {class: threshold}
    Column("probability_raw", Float),  # binary: the ensemble probability as shipped
    Column("probability", Float),  # binary: as decided (site-calibrated with a site profile)
    Column("probabilities", JSON(none_as_null=True)),
    Column("label", JSON(none_as_null=True)),  # a class, a list of classes (multilabel), or null: not assessed
    Column("finding", String(16)),
    Column("warnings", JSON(none_as_null=True)),  # [WarningCode]
    Column("error", String(64)),
    Column("latency_ms", Float),
    Column("meta", JSON(none_as_null=True)),
    Column("guard_scores", JSON(none_as_null=True)),  # revision 0002
    Index("ix_results_created_at", "created_at"),
    Index("ix_results_input_sha256", "input_sha256"),
    Index("ix_results_sop_instance_uid", "sop_instance_uid"),
)

confirmations = Table(
    "confirmations", metadata,
    Column("id", String(36), primary_key=True),
    Column("result_id", String(36), ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("label", String(64), nullable=False),  # one of the result's classes, or UNSURE
    Column("note", Text),
    Column("user", String(64), nullable=False),
    Column("source", String(16), nullable=False),  # app, cli, api, import
    Index("ix_confirmations_result_id", "result_id"),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("action", String(32), nullable=False),
    Column("user", String(64), nullable=False),
    Column("detail", JSON(none_as_null=True)),
)
