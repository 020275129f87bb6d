"""compliance screening of each transaction: the screening, its decision and the user's reason;
those in flight now are EXEMPT

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
    # In flight now: their sagas may have held or paid already, which a refusal could not undo,
    # so they finish unscreened (EXEMPT). Everything created from now on is screened first.
    op.execute("UPDATE transactions SET screening_decision = 'EXEMPT' WHERE state IN ('PENDING', 'PROCESSING')")


def downgrade() -> None:
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_column('screening_reason')
        batch_op.drop_column('screening_decision')
        batch_op.drop_column('screening')
