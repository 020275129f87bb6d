"""Compliance screening in the transaction service, over fakes: every transaction is screened
before its saga's first step, once (the same key on every attempt); REJECTED fails it with the
user's reason and nothing held; HELD keeps it PENDING, shown with its reason, and its item
waits without spending attempts until a review approves (the saga runs) or rejects it (FAILED);
compliance unreachable is retried and then parked, never skipped."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest
from test_transaction_service import ALICE, BOB, Service
from transaction_fakes import T0, payment, usd

from diboas.compliance.v1 import compliance_pb2
from diboas.transaction.v1 import transaction_pb2
from services.compliance.domain import TYPES
from services.domain.errors import DeadlineExceeded, Internal, InvalidArgument, ServiceUnavailable
from services.transaction.domain import (
    APPROVED,
    BRIDGE,
    COMPLETED,
    DEPOSIT,
    EXEMPT,
    FAILED,
    HELD,
    PENDING,
    REJECTED,
    WITHDRAW,
    Screened,
    Transaction,
)
from services.transaction.sagas import SAGAS
from services.transaction.sagas.screening import REVIEW_CHECK_MAX, REVIEW_CHECK_MIN, review_check_delay


@pytest.fixture
def s() -> Service:
    return Service()


def nothing_moved(s: Service) -> bool:
    return s.wallet.hold_calls == [] and s.providers.calls == [] and s.chains.calls == []


async def test_a_send_is_screened_once_with_its_users_and_then_held(s):
    tx_id = await s.send()
    await s.work_until_idle()
    (screened, key), = s.compliance.screen_calls
    assert key == f"{tx_id}:screening"
    assert (screened.initiator, screened.source_owner, screened.destination_owner) == ("alice", "alice", "bob")
    assert screened.hold == ""                                      # asked before the hold
    tx = s.stored(tx_id)
    assert (tx.state, tx.compliance) == (COMPLETED, Screened(f"screenings/s-{tx_id}", APPROVED, ""))
    assert len(s.wallet.hold_calls) == 1


@pytest.mark.parametrize("kind, fields, initiator", [
    (DEPOSIT, {"destination_wallet": "wallets/a"}, "alice"),
    (WITHDRAW, {"source_wallet": "wallets/a"}, "alice"),
    (BRIDGE, {"source_wallet": "wallets/a", "source_chain": "chains/ethereum", "target_chain": "chains/polygon",
              "destination_address": "0x" + "ab" * 20}, "alice"),
])
async def test_every_type_is_screened_as_its_initiators_before_its_first_step(s, kind, fields, initiator):
    s.compliance.script.answers = [REJECTED]
    tx_id = await s.create(kind, **fields)
    await s.work_until_idle()
    (screened, _), = s.compliance.screen_calls
    assert (screened.type, screened.initiator, screened.destination_address) == (
        kind, initiator, fields.get("destination_address", ""))
    assert s.stored(tx_id).state == FAILED and nothing_moved(s)


async def test_a_rejected_transaction_fails_with_the_users_reason_and_nothing_held(s):
    s.compliance.script.answers = [REJECTED]
    tx_id = await s.send()
    await s.work_until_idle()
    tx = s.stored(tx_id)
    assert (tx.state, tx.failure_reason, tx.hold) == (FAILED, "refused by compliance screening (sanctions)", "")
    assert tx.compliance.decision == REJECTED and nothing_moved(s)
    (topic, subject, _), = s.units.state.published
    assert (topic, subject) == ("transaction.failed", f"transactions/{tx_id}")
    assert s.units.state.queued == {}


async def test_a_held_transaction_waits_pending_and_shows_why_its_attempts_forgiven(s):
    s.compliance.script.answers = [HELD]
    tx_id = await s.send()
    await s.work_until_idle()
    tx = await s.service.get(tx_id, ALICE)
    assert (tx.state, tx.compliance.decision, tx.compliance.reason) == (PENDING, HELD, "held for a compliance review")
    assert nothing_moved(s) and s.units.state.published == []
    assert tx_id in s.units.state.queued and s.queue.errors == [] and s.queue.forgiven[tx_id] == 1
    assert (len(s.compliance.screen_calls), s.compliance.decision_calls) == (1, [])
    s.queue.wake()
    await s.work_until_idle()                                       # still held: only its review is asked for
    assert (len(s.compliance.screen_calls), s.compliance.decision_calls) == (1, [f"screenings/s-{tx_id}"])
    assert s.stored(tx_id).state == PENDING and nothing_moved(s) and s.queue.forgiven[tx_id] == 2
    item, delay, note = s.queue.deferred[0]
    assert (item, delay) == (tx_id, REVIEW_CHECK_MIN) and "held for a compliance review" in note


async def test_a_held_transaction_approved_on_review_moves_its_money(s):
    s.compliance.script.answers = [HELD]
    tx_id = await s.send()
    await s.work_until_idle()
    s.compliance.review(s.stored(tx_id), APPROVED)
    s.queue.wake()
    await s.work_until_idle()
    tx = s.stored(tx_id)
    assert (tx.state, tx.compliance.decision, tx.hold) == (COMPLETED, APPROVED, "wallets/a/holds/h1")
    assert len(s.compliance.screen_calls) == 1 and len(s.wallet.hold_calls) == 1


async def test_a_held_transaction_rejected_on_review_fails_and_moves_nothing(s):
    s.compliance.script.answers = [HELD]
    tx_id = await s.create(DEPOSIT, destination_wallet="wallets/a")
    await s.work_until_idle()
    s.compliance.review(s.stored(tx_id), REJECTED)
    s.queue.wake()
    await s.work_until_idle()
    tx = await s.service.get(tx_id, ALICE)
    assert (tx.state, tx.failure_reason, tx.compliance.decision) == (FAILED, "refused by a compliance review",
                                                                     REJECTED)
    assert nothing_moved(s) and s.units.state.queued == {}


@pytest.mark.parametrize("error", [ServiceUnavailable("compliance is unavailable", reason="UPSTREAM_UNAVAILABLE"),
                                   DeadlineExceeded("compliance took too long"),
                                   Internal("compliance broke"),
                                   InvalidArgument.field("screening.user_id", "is required")])
async def test_screening_that_cannot_be_had_is_retried_then_parked_never_skipped(s, error):
    """Whatever compliance answers instead of a decision (down, slow, broken, refusing), the
    saga does not go on: the item is retried and then parked, nothing held, nothing failed."""
    s.compliance.script.answers = [error] * 3
    tx_id = await s.send()
    await s.work_until_idle()
    tx = await s.service.get(tx_id, None)
    assert (tx.state, tx.compliance, tx.parked.attempts) == (PENDING, None, 3)
    assert nothing_moved(s) and len(s.compliance.screen_calls) == 3
    assert {key for _, key in s.compliance.screen_calls} == {f"{tx_id}:screening"}


async def test_a_lost_review_answer_is_asked_again_and_the_transaction_stays_held(s):
    s.compliance.script.answers = [HELD]
    s.compliance.decision_script.answers = [ServiceUnavailable("compliance is unavailable")]
    tx_id = await s.send()
    await s.work_until_idle()
    s.queue.wake()
    await s.work_until_idle()
    assert s.stored(tx_id).compliance.decision == HELD and nothing_moved(s)
    assert s.queue.errors and s.queue.errors[0][0] == tx_id          # a failed attempt, retried


async def test_an_approval_heard_before_a_lost_hold_is_asked_for_again_with_the_same_key(s):
    s.wallet.hold_script.answers = [ServiceUnavailable("wallet is unavailable")]
    tx_id = await s.send()
    await s.work_until_idle()
    assert s.stored(tx_id).state == COMPLETED
    assert [key for _, key in s.compliance.screen_calls] == [f"{tx_id}:screening"] * 2


async def test_an_approved_transaction_is_not_screened_again_after_a_step_was_recorded(s):
    s.providers.script.answers = [payment("PENDING"), payment("SUCCEEDED")]
    tx_id = await s.create(WITHDRAW, source_wallet="wallets/a")
    await s.work_until_idle()
    assert s.stored(tx_id).state == COMPLETED and len(s.compliance.screen_calls) == 1


async def test_only_the_users_reason_reaches_them_and_the_screening_name_with_it(s):
    s.compliance.script.answers = [HELD]
    tx_id = await s.send()
    await s.work_until_idle()
    for viewer in (ALICE, BOB, None):
        assert (await s.service.get(tx_id, viewer)).compliance == Screened(f"screenings/s-{tx_id}", HELD,
                                                                          "held for a compliance review")


def test_a_held_transactions_review_is_looked_at_more_rarely_the_longer_it_waits():
    tx = Transaction("t1", DEPOSIT, PENDING, "", "wallets/a", usd("1.00"), "", "", T0, T0, None)
    at = lambda seconds: review_check_delay(tx, T0 + dt.timedelta(seconds=seconds))  # noqa: E731
    assert at(0) == at(10) == REVIEW_CHECK_MIN
    assert at(100) == dt.timedelta(seconds=10)
    assert at(600) == at(86400) == REVIEW_CHECK_MAX


def test_every_transaction_type_can_be_screened():
    """A type the compliance service does not know would wait unscreened forever (its
    screenings refused, retried, parked): both contracts and the screening domain list it."""
    def named(enum) -> set[str]:
        return {name.removeprefix("TRANSACTION_TYPE_") for name in enum.keys()} - {"UNSPECIFIED"}
    assert named(transaction_pb2.TransactionType) == named(compliance_pb2.TransactionType) == set(TYPES) \
        == set(SAGAS.types)


async def test_an_approval_on_review_is_written_before_the_first_step(s):
    """So that a step that may have happened is retried without asking compliance again."""
    s.compliance.script.answers = [HELD]
    tx_id = await s.send()
    await s.work_until_idle()
    s.compliance.review(s.stored(tx_id), APPROVED)
    s.wallet.hold_script.answers = [ServiceUnavailable("wallet is unavailable")]     # the hold's answer lost
    s.compliance.decision_script.answers = [None, ServiceUnavailable("compliance is unavailable")]
    s.queue.wake()
    await s.work_until_idle()
    tx = s.stored(tx_id)
    assert (tx.state, tx.compliance.decision) == (COMPLETED, APPROVED)
    assert len(s.compliance.decision_calls) == 1                # the retry did not need compliance


async def test_a_transaction_in_flight_before_screening_finishes_unscreened(s):
    """EXEMPT (migration 0009): its saga may have held or paid already, which a refusal could not undo."""
    s.compliance.script.answers = [REJECTED]
    tx_id = await s.create(WITHDRAW, source_wallet="wallets/a")
    stored, *owners = s.units.state.transactions[tx_id]
    s.units.state.transactions[tx_id] = (dataclasses.replace(stored, compliance=Screened("", EXEMPT, "")), *owners)
    await s.work_until_idle()
    assert s.stored(tx_id).state == COMPLETED and s.compliance.screen_calls == []
    assert (await s.service.get(tx_id, ALICE)).compliance.decision == EXEMPT


async def test_a_saga_started_at_once_is_screened_and_held_like_any_other():
    s = Service(started_at_once=4)
    s.compliance.script.answers = [HELD]
    tx_id = await s.send()
    for _ in range(100):
        if s.queue.deferred:
            break
        await asyncio.sleep(0.001)
    assert [item for item, *_ in s.queue.deferred] == [tx_id]
    assert s.stored(tx_id).compliance.decision == HELD and nothing_moved(s)
