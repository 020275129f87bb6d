"""what is on its way to a wallet is read by (destination_wallet, state)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transactions_destination_wallet'))
        batch_op.create_index('ix_transactions_destination_wallet_state', ['destination_wallet', 'state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_index('ix_transactions_destination_wallet_state')
        batch_op.create_index(batch_op.f('ix_transactions_destination_wallet'), ['destination_wallet'], unique=False)
