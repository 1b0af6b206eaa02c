"""scenes, jobs and job events

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scenes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("media_kind", sa.String(32)),
        sa.Column("media_files", sa.Integer, nullable=False, server_default="0"),
        sa.Column("media_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("source_uri", sa.Text),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("scene_id", sa.String(64), sa.ForeignKey("scenes.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("kind", sa.String(32), nullable=False, server_default="reconstruct"),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("stage", sa.String(32)),
        sa.Column("step", sa.Integer),
        sa.Column("total", sa.Integer),
        sa.Column("max_steps", sa.Integer),
        sa.Column("fraction", sa.Float),
        sa.Column("eta_s", sa.Float),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("error_stage", sa.String(32)),
        sa.Column("error_message", sa.Text),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("worker", sa.String(256)),
        sa.Column("pid", sa.Integer),
        sa.Column("host", sa.String(256)),
        sa.Column("task_id", sa.String(256)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float),
    )
    op.create_index("ix_jobs_scene_id", "jobs", ["scene_id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32)),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("step", sa.Integer),
        sa.Column("total", sa.Integer),
        sa.Column("eta_s", sa.Float),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_events_job_id", "job_events")
    op.drop_table("job_events")
    op.drop_index("ix_jobs_created_at", "jobs")
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_index("ix_jobs_scene_id", "jobs")
    op.drop_table("jobs")
    op.drop_table("scenes")
