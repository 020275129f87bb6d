"""the W3C trace context a work item was queued in

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('traceparent', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('tracestate', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.drop_column('tracestate')
        batch_op.drop_column('traceparent')
