"""The backlog bound over a real database: what is counted (a queue's items, whoever holds them,
and undelivered events; not another queue's, nor delivered events), the metric, the refusal with
its retry delay, and the door opening again as work finishes."""
from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from diboas.events.v1 import events_pb2
from services.domain.errors import ResourceExhausted
from services.runtime.backlog import Backlog
from services.runtime.config import QueuePolicy
from services.runtime.messaging.queue import WorkQueue
from services.runtime.messaging.store import DELIVERED, Outbox
from services.transaction.tables import messaging, parked_work_items, work_items


def _gauge(service: str) -> float | None:
    return REGISTRY.get_sample_value("diboas_backlog", {"service": service})


async def _until(condition, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_the_backlog_counts_queued_work_and_undelivered_events_and_refuses_new_work_at_its_bound(
        transaction_database, request):
    db, service = transaction_database, f"bounded-{request.node.callspec.id}"
    queue = WorkQueue(db, work_items, "bounded", parked=parked_work_items, policy=QueuePolicy(max_backlog=3))
    other = WorkQueue(db, work_items, "other", parked=parked_work_items)
    outbox = Outbox(messaging, "transaction", lambda topic: ["wallet"], None)
    backlog = Backlog(db, service, queue.policy.max_backlog, [queue.held, outbox.undelivered], "things wait")
    with db.transaction() as connection:
        queue.enqueue(connection, "i0")
        leased = queue.enqueue(connection, "i1", leased=True)          # held by a worker: still in hand
        other.enqueue(connection, "x")                                   # another queue's: not counted
        delivered = outbox.add(connection, "t.done", "s", events_pb2.EventEnvelope())
        outbox.add(connection, "t.done", "s", events_pb2.EventEnvelope())   # undelivered: counted
        connection.execute(update(messaging.deliveries).where(messaging.deliveries.c.outbox_id.in_(
            messaging.outbox.select().with_only_columns(messaging.outbox.c.id)
            .where(messaging.outbox.c.event_id == delivered).scalar_subquery())).values(state=DELIVERED))
    assert await backlog.count() == 3
    with backlog.admit(), backlog.admit():                               # nothing counted yet: 0 of 3
        with backlog.admit():                                            # three being accepted at once
            with pytest.raises(ResourceExhausted):
                with backlog.admit():                                    # a fourth finds no place
                    pass
        backlog.accepted()
    with backlog.admit():                                                # two places given back
        for _ in range(2):
            backlog.accepted()                                           # accepted here: counted at once
    with pytest.raises(ResourceExhausted) as refused:
        with backlog.admit():
            pass
    assert refused.value.reason == "BACKLOG_FULL" and refused.value.retry_after_seconds == 10   # nothing drained yet
    assert "3 things wait (the bound is 3)" in refused.value.message

    stop = asyncio.Event()
    watching = asyncio.create_task(backlog.watch(stop, interval=0.01))
    try:
        await _until(lambda: backlog.held == 3 and _gauge(service) == 3)   # the count replaces the guess
        with pytest.raises(ResourceExhausted):
            with backlog.admit():
                pass
        with db.transaction() as connection:
            queue.done(connection, leased)                                # one finished: the door opens
        await _until(lambda: backlog.held == 2 and _gauge(service) == 2)
        with backlog.admit():
            backlog.accepted()
        with pytest.raises(ResourceExhausted) as refused:
            with backlog.admit():
                pass
        assert 1 <= refused.value.retry_after_seconds <= 60
    finally:
        stop.set()
        await watching


async def test_what_waits_outside_the_database_is_counted_with_it(transaction_database):
    db = transaction_database
    queue = WorkQueue(db, work_items, "outside", parked=parked_work_items)

    async def in_the_broker() -> int:
        return 4
    backlog = Backlog(db, "outside", 5, [queue.held], "things wait", [in_the_broker])
    with db.transaction() as connection:
        queue.enqueue(connection, "o0")
    assert await backlog.count() == 5
