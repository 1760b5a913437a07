"""The link map: images, leased link blocks, the block counter and the generated link key.

Revision ID: 0001
Revises:
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
        "images",
        sa.Column("link", sa.String(16), primary_key=True),
        sa.Column("number", sa.BigInteger, nullable=False, unique=True),
        sa.Column("object_key", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("delete_token_hash", sa.Text, nullable=True),
        sa.Column("derivatives", sa.JSON, nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("updated", sa.Double, nullable=False),
    )
    op.create_index("ix_images_owner_created", "images", ["owner", "created", "link"])
    op.create_index("ix_images_owner_sha256", "images", ["owner", "sha256"])
    op.create_table(
        "link_blocks",
        sa.Column("start", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("holder", sa.Text, nullable=True),
        sa.Column("used", sa.LargeBinary, nullable=True),
        sa.Column("leased_at", sa.Double, nullable=True),
    )
    # Released blocks (holder NULL) are looked up first when leasing.
    op.create_index("ix_link_blocks_holder", "link_blocks", ["holder", "start"])
    counter = op.create_table(
        "link_counter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("next_block", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counter, [{"id": 1, "next_block": 0}])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("meta", "link_counter", "link_blocks", "images"):
        op.drop_table(table)
