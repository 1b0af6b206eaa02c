"""media objects: one row per stored media file, unique per scene

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Each upload reserves its stored names here first (a unique (scene_id, name) pair), so two
uploads can never store two files under one name, and a scene's ``media_files`` /
``media_bytes`` grow by exactly what was stored.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media_objects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scene_id", sa.String(64), sa.ForeignKey("scenes.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column("original", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("scene_id", "name", name="uq_media_objects_scene_name"),
    )
    op.create_index("ix_media_objects_scene_id", "media_objects", ["scene_id"])


def downgrade() -> None:
    op.drop_index("ix_media_objects_scene_id", "media_objects")
    op.drop_table("media_objects")
