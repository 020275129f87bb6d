"""work_items.deferred and .forgiven: an item waiting for something outside it (a compliance review) is not
counted in the backlog, and the retry policy counts only the attempts after its last deferral

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deferred', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('forgiven', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.drop_column('forgiven')
        batch_op.drop_column('deferred')
