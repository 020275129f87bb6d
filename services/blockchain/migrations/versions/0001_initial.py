"""cross-chain transfers, idempotency keys

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

import services.runtime.db
from services.runtime.migrations import create_idempotency_keys, drop_idempotency_keys

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cross_chain_transfers',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('source_chain', sa.String(length=64), nullable=False),
    sa.Column('target_chain', sa.String(length=64), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('amount', services.runtime.db.ExactDecimal(length=64), nullable=False),
    sa.Column('destination_address', sa.String(length=128), nullable=False),
    sa.Column('transaction_name', sa.String(length=80), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('current_step', sa.String(length=16), nullable=False),
    sa.Column('compensating', sa.Boolean(), nullable=False),
    sa.Column('outcome_unknown', sa.Boolean(), nullable=False),
    sa.Column('source_tx_hash', sa.String(length=128), nullable=True),
    sa.Column('source_tx_block', sa.BigInteger(), nullable=True),
    sa.Column('bridge_tx_hash', sa.String(length=128), nullable=True),
    sa.Column('bridge_tx_block', sa.BigInteger(), nullable=True),
    sa.Column('target_tx_hash', sa.String(length=128), nullable=True),
    sa.Column('target_tx_block', sa.BigInteger(), nullable=True),
    sa.Column('compensations', sa.Text(), nullable=False),
    sa.Column('failure_reason', sa.Text(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cross_chain_transfers'))
    )
    with op.batch_alter_table('cross_chain_transfers', schema=None) as batch_op:
        batch_op.create_index('ix_cross_chain_transfers_state', ['state'], unique=False)

    create_idempotency_keys(op)


def downgrade() -> None:
    drop_idempotency_keys(op)
    with op.batch_alter_table('cross_chain_transfers', schema=None) as batch_op:
        batch_op.drop_index('ix_cross_chain_transfers_state')

    op.drop_table('cross_chain_transfers')
