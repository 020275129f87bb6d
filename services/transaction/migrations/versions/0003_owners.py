"""owners of the wallets a transaction touches (who may see it)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_owner', sa.String(length=128), server_default='', nullable=False))
        batch_op.add_column(sa.Column('destination_owner', sa.String(length=128), server_default='', nullable=False))
        batch_op.create_index('ix_transactions_destination_owner', ['destination_owner'], unique=False)
        batch_op.create_index('ix_transactions_source_owner', ['source_owner'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_index('ix_transactions_source_owner')
        batch_op.drop_index('ix_transactions_destination_owner')
        batch_op.drop_column('destination_owner')
        batch_op.drop_column('source_owner')

