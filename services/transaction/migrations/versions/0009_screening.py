"""compliance screening of each transaction: the screening, its decision and the user's reason

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('screening', sa.String(length=80), server_default='', nullable=False))
        batch_op.add_column(sa.Column('screening_decision', sa.String(length=16), server_default='', nullable=False))
        batch_op.add_column(sa.Column('screening_reason', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_column('screening_reason')
        batch_op.drop_column('screening_decision')
        batch_op.drop_column('screening')
