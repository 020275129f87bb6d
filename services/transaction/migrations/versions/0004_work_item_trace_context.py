"""the W3C trace context a work item was queued in

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from alembic import op

from services.runtime.migrations import add_work_item_trace_context, drop_work_item_trace_context

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_work_item_trace_context(op)


def downgrade() -> None:
    drop_work_item_trace_context(op)
