"""The wallet service's schema (SQLAlchemy Core). Migrations in migrations/ create it."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, String, Table, UniqueConstraint

from services.runtime.db import BigId, ExactDecimal, new_metadata
from services.runtime.idempotency import idempotency_table
from services.runtime.messaging.store import messaging_tables

metadata = new_metadata()

wallets = Table(
    "wallets", metadata,
    Column("id", String(40), primary_key=True),
    Column("owner_id", String(128), nullable=False),
    Column("currency", String(8), nullable=False),
    # Derived from the ledger (the sum of the wallet's postings), kept here in the same
    # transaction as the postings so reads and checks need no sum.
    Column("available", ExactDecimal, nullable=False),
    Column("held", ExactDecimal, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("owner_id", "currency"),
)

holds = Table(
    "holds", metadata,
    Column("id", String(40), primary_key=True),
    Column("wallet_id", String(40), ForeignKey("wallets.id"), nullable=False, index=True),
    Column("amount", ExactDecimal, nullable=False),
    Column("state", String(16), nullable=False),  # ACTIVE, CAPTURED, RELEASED
    Column("reference", String(256), nullable=False),
    Column("destination_wallet_id", String(40), ForeignKey("wallets.id")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Double entry: every journal's postings sum to zero, per currency.
journals = Table(
    "journals", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("type", String(16), nullable=False),
    Column("reference", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

postings = Table(
    "postings", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("journal_id", BigId, ForeignKey("journals.id"), nullable=False, index=True),
    # "wallet:<id>:available", "wallet:<id>:held" or "external:<currency>" (money entering or
    # leaving the platform).
    Column("account", String(80), nullable=False, index=True),
    Column("currency", String(8), nullable=False),
    Column("amount", ExactDecimal, nullable=False),  # signed
)

# What a wallet's owner sees: one line per journal that touched the wallet, with the balances after it.
ledger_entries = Table(
    "ledger_entries", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("wallet_id", String(40), ForeignKey("wallets.id"), nullable=False),
    Column("journal_id", BigId, ForeignKey("journals.id"), nullable=False),
    Column("type", String(16), nullable=False),
    Column("amount", ExactDecimal, nullable=False),
    Column("available_after", ExactDecimal, nullable=False),
    Column("held_after", ExactDecimal, nullable=False),
    Column("reference", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_ledger_entries_wallet_id_id", "wallet_id", "id"),
)

# Idempotency (AIP-155): the first response of each request_id, and what the request was.
idempotency_keys = idempotency_table(metadata)

# Events: the wallet consumes transaction.completed / transaction.failed (inbox) and may publish.
messaging = messaging_tables(metadata)
