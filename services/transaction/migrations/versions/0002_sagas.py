"""sagas: provider payments and cross-chain transfers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider', sa.String(length=80), server_default='', nullable=False))
        batch_op.add_column(sa.Column('provider_payment', sa.String(length=80), server_default='', nullable=False))
        batch_op.add_column(sa.Column('source_chain', sa.String(length=80), server_default='', nullable=False))
        batch_op.add_column(sa.Column('target_chain', sa.String(length=80), server_default='', nullable=False))
        batch_op.add_column(sa.Column('destination_address', sa.String(length=256), server_default='', nullable=False))
        batch_op.add_column(sa.Column('cross_chain_transfer', sa.String(length=80), server_default='', nullable=False))
        batch_op.add_column(sa.Column('chain_transactions', sa.Text(), server_default='[]', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_column('chain_transactions')
        batch_op.drop_column('cross_chain_transfer')
        batch_op.drop_column('destination_address')
        batch_op.drop_column('target_chain')
        batch_op.drop_column('source_chain')
        batch_op.drop_column('provider_payment')
        batch_op.drop_column('provider')

