"""64-bit ids: the ledger's and the messaging tables'

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
from alembic import op

from services.runtime.migrations import MESSAGING_IDS, narrow_ids, widen_ids

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

LEDGER_IDS = (("journals", "id"), ("ledger_entries", "id"), ("ledger_entries", "journal_id"),
              ("postings", "id"), ("postings", "journal_id"))


def upgrade() -> None:
    widen_ids(op, LEDGER_IDS + MESSAGING_IDS)


def downgrade() -> None:
    narrow_ids(op, LEDGER_IDS + MESSAGING_IDS)
