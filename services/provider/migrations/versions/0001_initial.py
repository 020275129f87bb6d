"""payments and idempotency keys

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
    create_idempotency_keys(op)
    op.create_table('payments',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('amount', services.runtime.db.ExactDecimal(length=64), nullable=False),
    sa.Column('wallet', sa.String(length=80), nullable=False),
    sa.Column('transaction', sa.String(length=80), nullable=False),
    sa.Column('preferred_provider', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('fee', services.runtime.db.ExactDecimal(length=64), nullable=True),
    sa.Column('provider_reference', sa.String(length=128), nullable=False),
    sa.Column('attempts', sa.Text(), nullable=False),
    sa.Column('failure_reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments'))
    )
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.create_index('ix_payments_transaction', ['transaction'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_index('ix_payments_transaction')

    op.drop_table('payments')
    drop_idempotency_keys(op)
