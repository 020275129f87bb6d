"""The shared runtime tables (idempotency keys, messaging, the work queue), as the services'
Alembic revisions create them: each service's migration calls these instead of declaring the
tables again.

Each function is the DDL of one revision of those tables, as it was first applied: a revision
already applied must keep creating what it created. A later change to a declaration
(idempotency.py, messaging/store.py, messaging/queue.py) is a new function here, called by a new
revision of every service that keeps the table; tests/integration/test_migrations.py checks
that every service's migrations end at its tables.py.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import Operations


def create_idempotency_keys(op: Operations) -> None:
    op.create_table(
        'idempotency_keys',
        sa.Column('request_id', sa.String(length=128), nullable=False),
        sa.Column('operation', sa.String(length=64), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('response', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('request_id', name=op.f('pk_idempotency_keys')),
    )


def drop_idempotency_keys(op: Operations) -> None:
    op.drop_table('idempotency_keys')


def create_messaging_tables(op: Operations) -> None:
    """outbox, deliveries, inbox and dead_letters (messaging/store.py)."""
    op.create_table(
        'inbox',
        sa.Column('consumer', sa.String(length=64), nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('handled_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('consumer', 'event_id', name=op.f('pk_inbox')),
    )
    op.create_table(
        'outbox',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('topic', sa.String(length=128), nullable=False),
        sa.Column('envelope', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
        sa.UniqueConstraint('event_id', name=op.f('uq_outbox_event_id')),
    )
    op.create_table(
        'deliveries',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('outbox_id', sa.Integer(), nullable=False),
        sa.Column('subscriber', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('retries', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['outbox_id'], ['outbox.id'], name=op.f('fk_deliveries_outbox_id_outbox')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_state_next_attempt_at', ['state', 'next_attempt_at'], unique=False)
    op.create_table(
        'dead_letters',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('topic', sa.String(length=128), nullable=False),
        sa.Column('subscriber', sa.String(length=64), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('replayed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'],
                                name=op.f('fk_dead_letters_delivery_id_deliveries')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters')),
    )


def drop_messaging_tables(op: Operations) -> None:
    op.drop_table('dead_letters')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_state_next_attempt_at')
    op.drop_table('deliveries')
    op.drop_table('outbox')
    op.drop_table('inbox')


def create_work_items(op: Operations) -> None:
    """The work queue's items (messaging/queue.py), without their trace context (add_work_item_trace_context)."""
    op.create_table(
        'work_items',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('queue', sa.String(length=64), nullable=False),
        sa.Column('item', sa.String(length=128), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('available_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_work_items')),
    )
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.create_index('ix_work_items_queue_available_at', ['queue', 'available_at'], unique=False)


def drop_work_items(op: Operations) -> None:
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.drop_index('ix_work_items_queue_available_at')
    op.drop_table('work_items')


def add_work_item_trace_context(op: Operations) -> None:
    """The W3C trace context a work item was queued in."""
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('traceparent', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('tracestate', sa.Text(), server_default='', nullable=False))


def drop_work_item_trace_context(op: Operations) -> None:
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.drop_column('tracestate')
        batch_op.drop_column('traceparent')


def create_parked_work_items(op: Operations) -> None:
    """The work queue's dead letters, and their replays."""
    op.create_table(
        'parked_work_items',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('queue', sa.String(length=64), nullable=False),
        sa.Column('item', sa.String(length=128), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('reason', sa.String(length=64), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('parked_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('parked_by', sa.String(length=128), nullable=False),
        sa.Column('replayed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('replayed_by', sa.String(length=128), nullable=False),
        sa.Column('traceparent', sa.String(length=64), server_default='', nullable=False),
        sa.Column('tracestate', sa.Text(), server_default='', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_parked_work_items')),
    )
    with op.batch_alter_table('parked_work_items', schema=None) as batch_op:
        batch_op.create_index('ix_parked_work_items_queue_item', ['queue', 'item'], unique=False)


def drop_parked_work_items(op: Operations) -> None:
    with op.batch_alter_table('parked_work_items', schema=None) as batch_op:
        batch_op.drop_index('ix_parked_work_items_queue_item')
    op.drop_table('parked_work_items')


# The 64-bit ids (db.BigId) of the shared tables, and the columns that refer to them.
MESSAGING_IDS = (("outbox", "id"), ("deliveries", "id"), ("deliveries", "outbox_id"),
                 ("dead_letters", "id"), ("dead_letters", "delivery_id"))
WORK_QUEUE_IDS = (("work_items", "id"), ("parked_work_items", "id"))


def _serial_sequence(op: Operations, table: str, column: str, type_: str) -> None:
    op.execute(f"DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s AS {type_}', "
               f"pg_get_serial_sequence('{table}', '{column}')); END $$")


def widen_ids(op: Operations, columns: tuple[tuple[str, str], ...]) -> None:
    """Make integer ids, and the columns referring to them, BIGINT on PostgreSQL, with the
    sequences that number the ids. SQLite's INTEGER is 64-bit already: nothing to do there."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in columns:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
        if column == "id":
            _serial_sequence(op, table, column, "bigint")


def narrow_ids(op: Operations, columns: tuple[tuple[str, str], ...]) -> None:
    """Undo widen_ids (fails on PostgreSQL once an id is past the 32-bit range)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in reversed(columns):
        if column == "id":
            _serial_sequence(op, table, column, "integer")
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
