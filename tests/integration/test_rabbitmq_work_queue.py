"""The work queue over RabbitMQ, on the real broker and both databases: each item dispatched once
and run by priority; a failed attempt comes back through a delay queue, is parked with its audit
record, alert and dead-letter copy once its attempts are spent, and runs again after a replay; a
message that is not a work message is dead-lettered at once; a consumer that dies gives its item
back and the redelivery is the next attempt; duplicate messages never run an item twice, nor two
attempts at once."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging

import aio_pika
import pytest
from sqlalchemy import select

from services.domain.clock import utcnow
from services.runtime.config import Messaging, QueuePolicy
from services.runtime.db import Database
from services.runtime.messaging.queue import MAX_ATTEMPTS, Claimed, Retried, WorkQueue
from services.runtime.messaging.rabbit import Broker
from services.runtime.messaging.rabbit_work import WorkConsumer, WorkDispatcher, WorkPublisher
from services.transaction.tables import parked_work_items, work_items

from test_rabbitmq_events import queue_depth

pytestmark = pytest.mark.rabbitmq
QUEUE = "financial.transactions"
WORK, DEAD = f"t.work.{QUEUE}", f"t.work.{QUEUE}.dead"


class Setup:
    """A queue with a short lease and quick retries, its publisher, and consumers to start."""

    def __init__(self, db: Database, rabbitmq_url: str, max_attempts: int = 3):
        self.db, self.url = db, rabbitmq_url
        self.queue = WorkQueue(db, work_items, QUEUE, lease=dt.timedelta(seconds=1), parked=parked_work_items,
                               policy=QueuePolicy(max_attempts=max_attempts, initial_backoff_seconds=0.2,
                                                  max_backoff_seconds=0.4), worker="test-worker")
        self.broker = Broker(Messaging("rabbitmq", rabbitmq_url, "t"), "test")
        self.publisher = WorkPublisher(self.broker, self.queue)
        self.dispatcher = WorkDispatcher(db, self.queue, self.publisher)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def add(self, item: str, priority: int = 0) -> None:
        with self.db.transaction() as connection:
            self.queue.enqueue(connection, item, priority)

    def done(self, claimed: Claimed) -> None:
        with self.db.transaction() as connection:
            self.queue.done(connection, claimed)

    def consumer(self, attempt, workers: int = 4, stop: asyncio.Event | None = None) -> asyncio.Task:
        consumer = WorkConsumer(self.broker, self.db, self.queue, self.publisher, attempt, workers, retry_seconds=0.2)
        task = asyncio.create_task(consumer.run(stop or self.stop))
        self.tasks.append(task)
        return task

    def start_dispatching(self) -> None:
        self.tasks.append(asyncio.create_task(self.dispatcher.run(self.stop)))

    def items(self) -> list:
        with self.db.reading() as connection:
            return list(connection.execute(select(work_items)))

    def parked(self) -> list:
        with self.db.reading() as connection:
            return list(connection.execute(select(parked_work_items)))

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.broker.close()


@pytest.fixture
async def setup(transaction_database, rabbitmq_url):
    setup = Setup(transaction_database, rabbitmq_url)
    yield setup
    await setup.close()


async def until(predicate, timeout: float = 15.0, what: str = "the condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_each_item_is_dispatched_once_and_the_most_urgent_runs_first(setup):
    for n in range(3):
        setup.add(f"low-{n}", 0)
    setup.add("urgent", 10)
    assert await setup.dispatcher.dispatch() == 4
    assert await setup.dispatcher.dispatch() == 0                   # marked dispatched once confirmed
    assert await queue_depth(setup.url, WORK) == 4
    ran: list[Claimed] = []

    async def attempt(claimed: Claimed) -> None:
        ran.append(claimed)
        await setup.db.run(setup.done, claimed)

    setup.consumer(attempt, workers=1)
    await until(lambda: len(ran) == 4, what="every item to run")
    assert ran[0].item == "urgent"
    assert sorted(c.item for c in ran[1:]) == ["low-0", "low-1", "low-2"]
    assert all(c.attempts == 1 for c in ran)
    await until(lambda: not setup.items(), what="the items to leave the queue")
    await asyncio.sleep(0.3)
    assert len(ran) == 4 and await queue_depth(setup.url, WORK) == 0


async def test_a_failing_item_comes_back_after_its_backoff_then_is_parked_and_runs_after_a_replay(setup, caplog):
    setup.add("tx-1", 5)
    setup.start_dispatching()
    attempts: list[tuple[int, float]] = []
    succeed = False

    async def attempt(claimed: Claimed) -> Retried | None:
        attempts.append((claimed.attempts, asyncio.get_running_loop().time()))
        if succeed:
            await setup.db.run(setup.done, claimed)
            return None
        return await setup.db.run(setup.queue.retry, claimed, "the provider is down")

    setup.consumer(attempt)
    with caplog.at_level(logging.ERROR, logger="diboas.queue"):
        await until(lambda: len(setup.parked()) == 1, what="the item to be parked")
    assert [n for n, _ in attempts] == [1, 2, 3]
    gaps = [later - earlier for (_, earlier), (_, later) in zip(attempts, attempts[1:], strict=False)]
    assert all(gap >= 0.09 for gap in gaps), gaps                    # at least half the 0.2 s backoff
    (parked,) = setup.parked()
    assert (parked.item, parked.attempts, parked.reason) == ("tx-1", 3, MAX_ATTEMPTS)
    assert "the provider is down" in parked.error and not setup.items()
    assert any(getattr(r, "alert", None) == "dead_letter" for r in caplog.records)
    await until_depth(setup.url, DEAD, 1)

    succeed = True
    with setup.db.transaction() as connection:
        assert setup.queue.replay_in(connection, [parked.id], utcnow(), "operator") == 1
    await until(lambda: len(attempts) == 4 and not setup.items(), what="the replayed item to run")
    assert attempts[3][0] == 1                                       # a fresh attempt count


async def until_depth(url: str, queue: str, depth: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (found := await queue_depth(url, queue)) != depth:
        assert asyncio.get_running_loop().time() < deadline, f"{queue} holds {found}, not {depth}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("body", [b"not json", b'{"id": "1", "item": "x"}', b'{"id": 1}', b'[1, "x"]',
                                  b'{"id": 1, "item": "x", "extra": true}'])
async def test_a_message_that_is_not_a_work_message_is_dead_lettered_at_once(setup, body):
    setup.add("tx-1")
    ran: list[str] = []

    async def attempt(claimed: Claimed) -> None:
        ran.append(claimed.item)
        await setup.db.run(setup.done, claimed)

    setup.consumer(attempt)
    setup.start_dispatching()
    await until(lambda: ran == ["tx-1"], what="the real item to run")
    connection = await aio_pika.connect(setup.url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=WORK)
    await until_depth(setup.url, DEAD, 1)
    assert ran == ["tx-1"]


async def test_a_consumer_that_dies_gives_its_item_back_and_the_redelivery_is_the_next_attempt(setup):
    setup.add("tx-1")
    setup.start_dispatching()
    held, dying = asyncio.Event(), asyncio.Event()

    async def hangs(claimed: Claimed) -> None:
        held.set()
        await asyncio.Event().wait()                                 # never ends: the worker is stuck, then gone

    gone = setup.consumer(hangs, stop=dying)
    await asyncio.wait_for(held.wait(), 10)
    dying.set()                                                      # it stops taking messages...
    await asyncio.sleep(0.2)
    gone.cancel()                                                    # ...its drain is cut short: the channel closes

    ran: list[Claimed] = []

    async def works(claimed: Claimed) -> None:
        ran.append(claimed)
        await setup.db.run(setup.done, claimed)

    setup.consumer(works)
    await until(lambda: len(ran) == 1 and not setup.items(), what="another consumer to run the item")
    assert ran[0].attempts == 2                                      # the lost attempt counted


async def test_duplicate_messages_never_run_an_item_twice_nor_at_once(setup, transaction_database):
    setup.add("tx-1")
    (row,) = setup.items()
    for _ in range(4):                                               # a crash between a publish and its ack, repeated
        await setup.publisher.at(row.id, "tx-1", 0, utcnow())
    running, most, ran = 0, 0, []

    async def attempt(claimed: Claimed) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.3)
        ran.append(claimed.attempts)
        await setup.db.run(setup.done, claimed)
        running -= 1

    setup.consumer(attempt)
    setup.consumer(attempt)
    setup.start_dispatching()                                        # and the dispatcher's own message
    await until(lambda: not setup.items(), what="the item to run")
    await until_depth(setup.url, WORK, 0)
    await asyncio.sleep(2.5)                                         # the duplicates that waited out the lease
    assert ran == [1] and most == 1
    assert await queue_depth(setup.url, WORK) == 0 and await queue_depth(setup.url, DEAD) == 0



async def test_an_item_whose_message_was_lost_is_dispatched_again(setup, caplog):
    setup.add("tx-1")
    assert await setup.dispatcher.dispatch() == 1
    connection = await aio_pika.connect(setup.url)
    async with connection:                                           # the message is lost: a purge
        channel = await connection.channel()
        await (await channel.declare_queue(WORK, passive=True)).purge()
    ran: list[Claimed] = []

    async def attempt(claimed: Claimed) -> None:
        ran.append(claimed)
        await setup.db.run(setup.done, claimed)

    setup.consumer(attempt)
    await asyncio.sleep(0.5)
    assert ran == [] and [r.dispatched for r in setup.items()] == [True]    # nothing brings it...
    sweeping = WorkDispatcher(setup.db, setup.queue, setup.publisher, overdue=dt.timedelta(seconds=0.3),
                              sweep_seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="diboas.rabbitmq"):
        setup.tasks.append(asyncio.create_task(sweeping.run(setup.stop)))
        await until(lambda: [c.item for c in ran] == ["tx-1"] and not setup.items(), what="the item to run")
    assert "never claimed (their message was lost)" in caplog.text       # ...until the sweep, which says so


async def test_a_publish_that_no_queue_takes_is_not_taken_for_confirmed(setup):
    channel = await setup.broker.channel()
    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key="t.nobody", mandatory=True)


async def test_a_stopping_consumer_takes_no_more_and_finishes_the_sagas_in_hand(setup):
    for n in range(3):
        setup.add(f"tx-{n}")
    started, ran = asyncio.Event(), []

    async def slow(claimed: Claimed) -> None:
        started.set()
        await asyncio.sleep(0.5)                                     # a saga step under way
        ran.append(claimed.item)
        await setup.db.run(setup.done, claimed)

    stopping = asyncio.Event()
    consumer = setup.consumer(slow, workers=1, stop=stopping)
    setup.start_dispatching()
    await asyncio.wait_for(started.wait(), 10)
    stopping.set()
    await asyncio.wait_for(consumer, 10)
    assert len(ran) == 1 and len(setup.items()) == 2                 # the one in hand finished, no more taken
    await until_depth(setup.url, WORK, 2)                            # the first acknowledged, the others waiting
