"""Compliance screening: the step before every saga, whatever its type. The worker runs it
before `Saga.run`, so no transaction's money moves unscreened.

  screen (key "<tx>:screening") ──> APPROVED: the saga runs
                                ──> REJECTED: FAILED with the user's reason, before anything was held
                                ──> HELD: written (PENDING, with the user's reason), and looked at
                                    again (GetScreening) until an operator's review approves it
                                    (the saga runs) or rejects it (FAILED)

A screening that cannot be had (compliance down, slow, refusing) is retried like any step that
may have happened, never skipped: the saga waits, and after the queue's retry policy its item
is parked for an operator. An approval is written before the first step when it came from a
review; a first-time approval is not (one write less per transaction), so a step that may have
happened after it is retried by asking again, which answers the same (the key's first answer).

Transactions in flight when screening was introduced are EXEMPT (migration 0009): their sagas
may have held or paid already, which a refusal could not undo, so they finish unscreened.
"""
from __future__ import annotations

import datetime as dt

from services.domain.errors import ServiceUnavailable

from ..domain import APPROVED, EXEMPT, HELD, REJECTED, Transaction
from .saga import Fail, SagaContext, Waiting

# How soon a held transaction's review is looked at again: a tenth of how long it has been
# waiting, between these. A review in the first minute is acted on within seconds; a
# transaction held for hours costs one call a minute.
REVIEW_CHECK_MIN = dt.timedelta(seconds=1)
REVIEW_CHECK_MAX = dt.timedelta(seconds=60)


def review_check_delay(tx: Transaction, now: dt.datetime) -> dt.timedelta:
    return min(REVIEW_CHECK_MAX, max(REVIEW_CHECK_MIN, (now - tx.created_at) / 10))


async def screen(tx: Transaction, context: SagaContext) -> None:
    """Return when the transaction is approved; `Fail` when rejected; `Waiting` while held."""
    found = tx.compliance
    if found is not None and found.decision in (APPROVED, EXEMPT):
        return
    if found is None:
        found = await context.compliance.screen(tx, request_id=f"{tx.id}:screening")
    elif found.decision == HELD:
        found = await context.compliance.decision(found.screening)
    if found.decision not in (APPROVED, REJECTED, HELD):
        raise ServiceUnavailable(f"{found.screening} has no decision ({found.decision or 'none'})",
                                 reason="SCREENING_UNDECIDED")
    was_held, first_heard = tx.compliance is not None, found != tx.compliance
    tx.compliance = found
    if found.decision == REJECTED:
        raise Fail(found.reason or "refused by compliance screening")
    if first_heard and (found.decision == HELD or was_held):
        # Its user sees it held (and why) while it waits; once approved on review, that is
        # written before the first step, so a later retry never needs compliance again.
        tx.updated_at = context.clock()
        await context.save(tx)
    if found.decision == HELD:
        raise Waiting(f"{tx.name} is held for a compliance review ({found.screening})",
                      review_check_delay(tx, context.clock()))
