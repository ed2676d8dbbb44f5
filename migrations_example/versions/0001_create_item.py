"""Create the item table with a few rows.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    item = op.create_table(
        "item",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
    )
    op.bulk_insert(
        item,
        [
            {"id": 1, "name": "Apple", "price": 1.25},
            {"id": 2, "name": "Pear", "price": 2.50},
        ],
    )


def downgrade() -> None:
    op.drop_table("item")
