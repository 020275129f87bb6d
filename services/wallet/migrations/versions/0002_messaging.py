"""messaging: outbox, deliveries, inbox, dead letters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""
from alembic import op

from services.runtime.migrations import create_messaging_tables, drop_messaging_tables

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables(op)


def downgrade() -> None:
    drop_messaging_tables(op)
