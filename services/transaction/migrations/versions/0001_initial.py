"""transactions, idempotency keys, work queue, messaging

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

import services.runtime.db
from services.runtime.migrations import (
    create_idempotency_keys,
    create_messaging_tables,
    create_work_items,
    drop_idempotency_keys,
    drop_messaging_tables,
    drop_work_items,
)

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_idempotency_keys(op)
    create_messaging_tables(op)
    op.create_table('transactions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('source_wallet', sa.String(length=80), nullable=False),
    sa.Column('destination_wallet', sa.String(length=80), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('amount', services.runtime.db.ExactDecimal(length=64), nullable=False),
    sa.Column('hold', sa.String(length=160), nullable=False),
    sa.Column('failure_reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transactions'))
    )
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.create_index('ix_transactions_destination_wallet', ['destination_wallet'], unique=False)
        batch_op.create_index('ix_transactions_source_wallet', ['source_wallet'], unique=False)
    create_work_items(op)


def downgrade() -> None:
    drop_work_items(op)
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_index('ix_transactions_source_wallet')
        batch_op.drop_index('ix_transactions_destination_wallet')

    op.drop_table('transactions')
    drop_messaging_tables(op)
    drop_idempotency_keys(op)
