"""Add item.sku and normalise names to lower case.

The second step is the dangerous kind for a cache: ``SELECT id, name FROM item`` is the same
SQL before and after, but its rows change underneath.  env.py's invalidation covers it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

item = sa.table("item", sa.column("id", sa.Integer), sa.column("name", sa.String))


def upgrade() -> None:
    op.add_column("item", sa.Column("sku", sa.String(20), nullable=True))
    op.execute(item.update().values(name=sa.func.lower(item.c.name)))


def downgrade() -> None:
    with op.batch_alter_table("item") as batch:
        batch.drop_column("sku")
