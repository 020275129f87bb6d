"""The transaction service's schema (SQLAlchemy Core). Migrations in migrations/ create it."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, Text

from services.runtime.db import ExactDecimal
from services.runtime.idempotency import idempotency_table
from services.runtime.messaging.queue import work_items_table
from services.runtime.messaging.store import messaging_tables

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s",
})

transactions = Table(
    "transactions", metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(16), nullable=False),       # SEND, DEPOSIT, WITHDRAW, BRIDGE
    Column("state", String(16), nullable=False),      # PENDING, PROCESSING, COMPLETED, FAILED
    Column("source_wallet", String(80), nullable=False),
    Column("destination_wallet", String(80), nullable=False),
    Column("currency", String(8), nullable=False),
    Column("amount", ExactDecimal, nullable=False),
    Column("hold", String(160), nullable=False),
    Column("failure_reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    Index("ix_transactions_source_wallet", "source_wallet"),
    Index("ix_transactions_destination_wallet", "destination_wallet"),
)

idempotency_keys = idempotency_table(metadata)
work_items = work_items_table(metadata)
messaging = messaging_tables(metadata)
