"""The work queue: priorities, leases that expire (a dead worker's item comes back), leases a
busy worker renews, and a worker that lost its lease changing nothing."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from services.runtime.db import Database
from services.runtime.messaging.queue import WorkQueue
from services.transaction.app import MIGRATIONS
from services.transaction.tables import work_items


class Clock:
    def __init__(self):
        self.now = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def queue(database_url):
    db = Database(database_url, MIGRATIONS)
    db.migrate()
    clock = Clock()
    yield WorkQueue(db, work_items, "q", lease=dt.timedelta(seconds=30), clock=clock), db, clock
    db.close()


def add(db, queue, item: str, priority: int = 0) -> None:
    with db.transaction() as connection:
        queue.enqueue(connection, item, priority)


def test_the_most_urgent_item_first_and_a_dead_workers_item_comes_back(queue):
    q, db, clock = queue
    add(db, q, "low", 0)
    add(db, q, "high", 10)
    first = q.claim()
    assert first.item == "high" and first.attempts == 1
    assert q.claim().item == "low" and q.claim() is None            # both leased
    clock.advance(31)                                                # the first worker died
    again = q.claim()
    assert again.item == "high" and again.attempts == 2


def test_a_renewed_lease_keeps_the_item_and_a_lost_lease_changes_nothing(queue):
    q, db, clock = queue
    add(db, q, "saga")
    mine = q.claim()
    for _ in range(3):                          # a long step: 75 s, renewed every 25 s
        clock.advance(25)
        assert q.renew(mine)
        assert q.claim() is None                # nobody else gets it meanwhile
    clock.advance(31)                           # the worker stalled past its lease
    theirs = q.claim()
    assert theirs is not None and theirs.attempts == mine.attempts + 1
    assert not q.renew(mine)                    # the stale worker learns it lost the item
    q.retry(mine, "late failure")               # and its retry does not push the new holder's lease
    with db.reading() as connection:
        row = connection.execute(select(work_items)).one()
    assert row.attempts == theirs.attempts and row.last_error == ""
    assert row.available_at.replace(tzinfo=dt.timezone.utc) == clock.now + dt.timedelta(seconds=30)


async def test_a_saga_step_longer_than_the_lease_is_run_by_one_worker_only(database_url, pki):
    """Workers renew the lease of the item they work on: a slow wallet (a hold taking five
    leases) does not get the same saga started by the other workers."""
    import asyncio

    from services.domain.money import Money
    from services.runtime.messaging.secure import KeyRing
    from services.runtime.messaging.store import Outbox
    from services.transaction.domain import SEND, Transaction
    from services.transaction.service import TransactionService
    from services.transaction.tables import messaging

    class SlowWallet:
        holds = 0

        async def describe(self, wallet):
            return "alice", "USD"

        async def funds(self, source, amount):
            from services.transaction.wallet_client import Funds
            return Funds(True, "100.00")

        async def hold(self, source, amount, reference, request_id):
            SlowWallet.holds += 1
            await asyncio.sleep(1.0)
            return f"{source}/holds/h1"

    db = Database(database_url, MIGRATIONS)
    db.migrate()
    queue = WorkQueue(db, work_items, "q", lease=dt.timedelta(seconds=0.2))
    service = TransactionService(db, SlowWallet(), queue, Outbox(messaging, "transaction", lambda topic: [],
                                                                KeyRing.load(pki)))
    draft = Transaction("", SEND, "", "wallets/a", "wallets/b", Money.parse("USD", "1.00"), "", "", None, None, None)
    created = await service.create("r1", "fp", draft, lambda tx: tx.id.encode())
    stop = asyncio.Event()
    workers = [asyncio.create_task(service.work(stop, idle_seconds=0.01)) for _ in range(3)]
    try:
        for _ in range(300):
            if (await service.get(created.decode())).state == "COMPLETED":
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        db.close()
    assert SlowWallet.holds == 1


def test_every_claim_of_an_item_returns_the_trace_context_it_was_queued_in(queue):
    q, db, clock = queue
    context = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "vendor=x"}
    with db.transaction() as connection:
        q.enqueue(connection, "traced", trace_context=context)
    first = q.claim()
    q.retry(first, "upstream down")
    clock.advance(60)
    again = q.claim()
    assert again.attempts == 2
    assert [(c.traceparent, c.tracestate) for c in (first, again)] == [(context["traceparent"], "vendor=x")] * 2
