"""The compliance service's schema (SQLAlchemy Core). Migrations in migrations/ create it."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table, Text

from services.runtime.db import BigId, ExactDecimal, new_metadata
from services.runtime.idempotency import idempotency_table

metadata = new_metadata()

# One row per screened transaction: what was screened, the decision, why (for operators and for
# the user), and an operator's review of a held one (who, when, why: the audit record).
screenings = Table(
    "screenings", metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),    # newest first, page tokens
    Column("id", String(40), nullable=False, unique=True),
    Column("transaction", String(80), nullable=False, unique=True),
    Column("type", String(16), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("currency", String(8), nullable=False),
    Column("amount", ExactDecimal, nullable=False),
    Column("source_owner", String(128), nullable=False),
    Column("destination_owner", String(128), nullable=False),
    Column("destination_address", String(128), nullable=False),
    Column("decision", String(16), nullable=False),        # now: APPROVED, REJECTED, HELD
    Column("rule", String(64), nullable=False),
    Column("explanation", Text, nullable=False),
    Column("reason", String(256), nullable=False),
    Column("findings", Text, nullable=False),              # JSON list of {rule, check, action, explanation}
    Column("screened_at", DateTime(timezone=True), nullable=False),
    Column("review_decision", String(16), nullable=False),
    Column("review_reason", Text, nullable=False),
    Column("reviewer", String(128), nullable=False),
    Column("reviewed_at", DateTime(timezone=True)),
    Index("ix_screenings_user_id_screened_at", "user_id", "screened_at"),
    Index("ix_screenings_decision_seq", "decision", "seq"),
)

# Idempotency (AIP-155): the first response of each request_id, and what the request was.
idempotency_keys = idempotency_table(metadata)
