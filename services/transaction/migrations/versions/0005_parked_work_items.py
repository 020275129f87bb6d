"""parked work items: the dead letters of the work queue, and their replays

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from alembic import op

from services.runtime.migrations import create_parked_work_items, drop_parked_work_items

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_parked_work_items(op)


def downgrade() -> None:
    drop_parked_work_items(op)
