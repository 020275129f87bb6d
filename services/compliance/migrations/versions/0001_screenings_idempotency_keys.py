"""screenings, idempotency keys

Revision ID: 0001
Revises:
Create Date: 2026-12-04 11:03:25.738435
"""
import sqlalchemy as sa
from alembic import op

import services.runtime.db  # ExactDecimal (tools/migration.py did not add this import)
from services.runtime.migrations import create_idempotency_keys, drop_idempotency_keys

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_idempotency_keys(op)
    op.create_table('screenings',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('transaction', sa.String(length=80), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('amount', services.runtime.db.ExactDecimal(length=64), nullable=False),
    sa.Column('source_owner', sa.String(length=128), nullable=False),
    sa.Column('destination_owner', sa.String(length=128), nullable=False),
    sa.Column('destination_address', sa.String(length=128), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('explanation', sa.Text(), nullable=False),
    sa.Column('reason', sa.String(length=256), nullable=False),
    sa.Column('findings', sa.Text(), nullable=False),
    sa.Column('screened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('review_decision', sa.String(length=16), nullable=False),
    sa.Column('review_reason', sa.Text(), nullable=False),
    sa.Column('reviewer', sa.String(length=128), nullable=False),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_screenings')),
    sa.UniqueConstraint('id', name=op.f('uq_screenings_id')),
    sa.UniqueConstraint('transaction', name=op.f('uq_screenings_transaction'))
    )
    with op.batch_alter_table('screenings', schema=None) as batch_op:
        batch_op.create_index('ix_screenings_decision_seq', ['decision', 'seq'], unique=False)
        batch_op.create_index('ix_screenings_user_id_screened_at', ['user_id', 'screened_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('screenings', schema=None) as batch_op:
        batch_op.drop_index('ix_screenings_user_id_screened_at')
        batch_op.drop_index('ix_screenings_decision_seq')

    op.drop_table('screenings')
    drop_idempotency_keys(op)
