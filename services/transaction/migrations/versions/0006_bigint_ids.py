"""64-bit ids: the messaging tables' and the work queue's

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
from alembic import op

from services.runtime.migrations import MESSAGING_IDS, WORK_QUEUE_IDS, narrow_ids, widen_ids

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    widen_ids(op, MESSAGING_IDS + WORK_QUEUE_IDS)


def downgrade() -> None:
    narrow_ids(op, MESSAGING_IDS + WORK_QUEUE_IDS)
