"""parked work items: the dead letters of the work queue, and their replays

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('parked_work_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('queue', sa.String(length=64), nullable=False),
    sa.Column('item', sa.String(length=128), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('parked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('parked_by', sa.String(length=128), nullable=False),
    sa.Column('replayed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('replayed_by', sa.String(length=128), nullable=False),
    sa.Column('traceparent', sa.String(length=64), server_default='', nullable=False),
    sa.Column('tracestate', sa.Text(), server_default='', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_parked_work_items'))
    )
    with op.batch_alter_table('parked_work_items', schema=None) as batch_op:
        batch_op.create_index('ix_parked_work_items_queue_item', ['queue', 'item'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('parked_work_items', schema=None) as batch_op:
        batch_op.drop_index('ix_parked_work_items_queue_item')

    op.drop_table('parked_work_items')
