"""The blockchain service's schema (SQLAlchemy Core). Migrations in migrations/ create it."""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, String, Table, Text

from services.runtime.db import ExactDecimal, new_metadata
from services.runtime.idempotency import idempotency_table

metadata = new_metadata()


def _tx_columns(step: str) -> list[Column]:
    """A step's transaction on its chain: hash and block, NULL until the step is done."""
    return [Column(f"{step}_tx_hash", String(128)), Column(f"{step}_tx_block", BigInteger)]


cross_chain_transfers = Table(
    "cross_chain_transfers", metadata,
    Column("id", String(40), primary_key=True),
    Column("source_chain", String(64), nullable=False),
    Column("target_chain", String(64), nullable=False),
    Column("currency", String(8), nullable=False),
    Column("amount", ExactDecimal, nullable=False),
    Column("destination_address", String(128), nullable=False),
    Column("transaction_name", String(80), nullable=False),      # "transactions/{id}" or ""
    Column("state", String(16), nullable=False),                 # PENDING, IN_PROGRESS, COMPLETED, COMPENSATED, FAILED
    Column("current_step", String(16), nullable=False),          # UNSPECIFIED, SOURCE, BRIDGE, TARGET
    Column("compensating", Boolean, nullable=False),
    Column("outcome_unknown", Boolean, nullable=False),
    *_tx_columns("source"), *_tx_columns("bridge"), *_tx_columns("target"),
    Column("compensations", Text, nullable=False),               # JSON list, in order
    Column("failure_reason", Text, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    Index("ix_cross_chain_transfers_state", "state"),
)

idempotency_keys = idempotency_table(metadata)
