"""The provider service's schema (SQLAlchemy Core): payments and idempotency keys."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text

from services.runtime.db import ExactDecimal, new_metadata
from services.runtime.idempotency import idempotency_table

metadata = new_metadata()

payments = Table(
    "payments", metadata,
    Column("id", String(40), primary_key=True),
    Column("direction", String(8), nullable=False),         # PAY_IN, PAY_OUT
    Column("currency", String(8), nullable=False),
    Column("amount", ExactDecimal, nullable=False),
    Column("wallet", String(80), nullable=False),
    Column("transaction", String(80), nullable=False),
    Column("preferred_provider", String(64), nullable=False),
    Column("state", String(16), nullable=False),             # PENDING, SUCCEEDED, FAILED
    Column("provider", String(64), nullable=False),          # the one that executed it
    Column("fee", ExactDecimal),
    Column("provider_reference", String(128), nullable=False),
    Column("attempts", Text, nullable=False),                # JSON list, in order
    Column("failure_reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    Index("ix_payments_transaction", "transaction"),
)

idempotency_keys = idempotency_table(metadata)
