"""The transaction service's schema (SQLAlchemy Core). Migrations in migrations/ create it."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text

from services.runtime.db import ExactDecimal, new_metadata
from services.runtime.idempotency import idempotency_table
from services.runtime.messaging.queue import parked_work_items_table, work_items_table
from services.runtime.messaging.store import messaging_tables

metadata = new_metadata()

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
    # DEPOSIT and WITHDRAW: the provider asked for (empty: the provider service chooses; then the
    # one that executed) and its payment. BRIDGE: the chains, the address and the transfer.
    Column("provider", String(80), nullable=False, server_default=""),
    Column("provider_payment", String(80), nullable=False, server_default=""),
    Column("source_chain", String(80), nullable=False, server_default=""),
    Column("target_chain", String(80), nullable=False, server_default=""),
    Column("destination_address", String(256), nullable=False, server_default=""),
    Column("cross_chain_transfer", String(80), nullable=False, server_default=""),
    Column("chain_transactions", Text, nullable=False, server_default="[]"),   # JSON [{chain, hash, block}]
    # Owners of the wallets, as the wallet said at creation: who may see the transaction.
    Column("source_owner", String(128), nullable=False, server_default=""),
    Column("destination_owner", String(128), nullable=False, server_default=""),
    # Compliance screening: the screening, its decision and the user's reason ("" until screened).
    Column("screening", String(80), nullable=False, server_default=""),
    Column("screening_decision", String(16), nullable=False, server_default=""),
    Column("screening_reason", Text, nullable=False, server_default=""),
    Index("ix_transactions_source_wallet", "source_wallet"),
    # Also what is on its way to a wallet (its PENDING and PROCESSING transactions), without reading its history.
    Index("ix_transactions_destination_wallet_state", "destination_wallet", "state"),
    Index("ix_transactions_source_owner", "source_owner"),
    Index("ix_transactions_destination_owner", "destination_owner"),
)

idempotency_keys = idempotency_table(metadata)
work_items = work_items_table(metadata)
parked_work_items = parked_work_items_table(metadata)
messaging = messaging_tables(metadata)
