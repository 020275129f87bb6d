"""A work queue over RabbitMQ (messaging.transport: rabbitmq), for many instances at once.

  truth     the work_items rows stay the truth: enqueued in the transaction that creates the
            work, leased, retried, parked and replayed exactly as in queue.py. A message only
            says "look at item N": one naming an item that is gone (its work ended, or it was
            parked) is acknowledged and forgotten, so a duplicate changes nothing, and nothing
            else in a message is trusted.
  dispatch  WorkDispatcher publishes each new (or replayed) item to the queue's priority queue
            (persistent, the item's priority, publisher confirms; a publish no queue took
            raises) and marks it dispatched once the broker confirmed: once per dispatcher that
            sees it first (each instance runs one; a duplicate changes nothing). An item still
            unclaimed OVERDUE after it became available lost its message (a queue purged, a
            broker's disk gone): it is dispatched again, with a warning.
  consume   WorkConsumer: competing consumers in every instance. For each message it claims
            the item named (WorkQueue.claim_item): the lease keeps a saga to one instance at a
            time, and a message for an item leased elsewhere waits out the lease. A message is
            acknowledged only once the item's outcome is written, or another message for it
            was confirmed: a consumer that dies gives its messages back to the broker, and the
            redelivery is the next attempt (a crash loop is parked at claim, as in queue.py).
            A saga runs in a task of its own: a channel that closes under it (the broker
            restarting) does not cancel it. On stop the consumer takes no more messages and
            lets the sagas in hand finish (the server gives background work the drain time).
  backoff   a retried item's next message goes through delay queues: one per power of two of
            milliseconds from 125 ms, each holding its messages that long (a per-queue TTL)
            before dead-lettering them into the priority queue. A delay is spent in the
            largest tier it fills; what remains is spent the same way on arrival.
  dead      a parked item gets the audit record, alert and metric of queue.py; one parked after
            a failed attempt also gets a copy in the queue's dead-letter queue (the newest
            DEAD_LETTERS_KEPT) for the broker's tools. A message that is not a work message
            (bigger than MAX_BODY, not the JSON of an id and an item name) goes there at once.
            `diboas dead-letters` replays from the audit record.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
from typing import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from services.domain.clock import utcnow
from services.domain.errors import ServiceUnavailable

from ..db import Database
from ..loops import pause
from .queue import Claimed, ParkedItem, Retried, WorkQueue
from .rabbit import Broker, consume

log = logging.getLogger("diboas.rabbitmq")
PUBLISH_TIMEOUT_SECONDS = 10.0
MAX_PRIORITY = 10                   # RabbitMQ advises at most 10 levels; higher item priorities share the top
FIRST_TIER_MS = 125
DEAD_LETTERS_KEPT = 10_000
DISPATCH_BATCH = 100
MAX_BODY = 512                      # bytes: a work message is an id and an item name
ITEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
OVERDUE = dt.timedelta(minutes=5)   # available and unclaimed this long: its message was lost
SWEEP_SECONDS = 30.0


def delay_tiers(longest_seconds: float) -> list[int]:
    """The delay queues' TTLs in milliseconds: 125, 250, ... up to the first at least `longest_seconds`."""
    tiers = [FIRST_TIER_MS]
    while tiers[-1] < longest_seconds * 1000:
        tiers.append(tiers[-1] * 2)
    return tiers


def tier_for(remaining_ms: float, tiers: list[int]) -> int:
    """The delay queue a message waits in next: the largest that `remaining_ms` fills, the
    shortest when it fills none (a message never comes back early by more than that)."""
    return max((t for t in tiers if t <= remaining_ms), default=tiers[0])


def encode(item_id: int, item: str) -> bytes:
    return json.dumps({"id": item_id, "item": item}, separators=(",", ":")).encode()


def decode(body: bytes) -> tuple[int, str]:
    """The item a work message names; ValueError when the body is not a work message."""
    if len(body) > MAX_BODY:
        raise ValueError(f"the body is {len(body)} bytes, more than a work message's {MAX_BODY}")
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):         # not UTF-8, not JSON, or nested past the parser's depth
        raise ValueError("the body is not JSON") from None
    if (not isinstance(fields, dict) or set(fields) != {"id", "item"} or type(fields["id"]) is not int
            or not 0 < fields["id"] < 2 ** 63 or not isinstance(fields["item"], str) or not ITEM.fullmatch(fields["item"])):
        raise ValueError('the body is not {"id": <item id>, "item": "<item name>"}')
    return fields["id"], fields["item"]


async def declare_work_queue(channel: AbstractChannel, broker: Broker, queue: str, tiers: list[int]) -> AbstractQueue:
    """The priority queue, its dead-letter queue and its delay queues (idempotent)."""
    names = broker.names
    name = names.work_queue(queue)
    dead = names.dead_letter_queue(name)
    await channel.declare_queue(dead, durable=True, arguments={"x-queue-type": "quorum", "x-max-length": DEAD_LETTERS_KEPT})
    work = await channel.declare_queue(name, durable=True, arguments={
        "x-max-priority": MAX_PRIORITY, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    for milliseconds in tiers:
        await channel.declare_queue(names.delay_queue(name, milliseconds), durable=True, arguments={
            "x-message-ttl": milliseconds, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": name})
    return work


class WorkPublisher:
    """Publishes work messages (with confirms) to a work queue, to one of its delay queues or to
    its dead-letter queue; ServiceUnavailable when the broker did not confirm."""

    def __init__(self, broker: Broker, queue: WorkQueue, clock: Callable[[], dt.datetime] = utcnow):
        self._broker, self._queue, self._clock = broker, queue, clock
        self.name = broker.names.work_queue(queue.name)
        self.tiers = delay_tiers(max(queue.policy.max_backoff_seconds, queue.lease_seconds))
        self._exchange: AbstractExchange | None = None
        self._opening = asyncio.Lock()

    async def declare(self, channel: AbstractChannel) -> AbstractQueue:
        return await declare_work_queue(channel, self._broker, self._queue.name, self.tiers)

    async def _ready(self) -> AbstractExchange:
        async with self._opening:
            if self._exchange is None or self._exchange.channel.is_closed:
                channel = await self._broker.channel()
                await self.declare(channel)
                self._exchange = channel.default_exchange
            return self._exchange

    async def _publish(self, body: bytes, routing_key: str, priority: int, headers: dict | None = None) -> None:
        try:
            exchange = await self._ready()
            message = aio_pika.Message(body, content_type="application/json", headers=headers,
                                       priority=max(0, min(MAX_PRIORITY, priority)),
                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - not confirmed, whatever the cause: the caller tries again
            self._exchange = None
            raise ServiceUnavailable(f"RabbitMQ at {self._broker.where} did not take the work message: "
                                     f"{exc or type(exc).__name__}", reason="BROKER_UNAVAILABLE") from None

    async def at(self, item_id: int, item: str, priority: int, when: dt.datetime) -> None:
        """A message for the item, delivered at `when` (now when it is past)."""
        remaining_ms = (when - self._clock()).total_seconds() * 1000
        key = self.name if remaining_ms <= 0 else self._broker.names.delay_queue(self.name, tier_for(remaining_ms, self.tiers))
        await self._publish(encode(item_id, item), key, priority)

    async def dead_letter(self, body: bytes, priority: int, headers: dict) -> None:
        await self._publish(body, self._broker.names.dead_letter_queue(self.name), priority, headers)


class WorkDispatcher:
    """Publishes every item no message carries yet, then marks it dispatched; while the broker
    (or the database) is away it waits (the items wait in the database) and says so once. Every
    SWEEP_SECONDS it also sends again the items whose message was lost (`overdue`). Between rounds
    that found nothing it waits `idle_seconds`, or until the process queues an item (`arrived`)."""

    def __init__(self, db: Database, queue: WorkQueue, publisher: WorkPublisher, idle_seconds: float = 0.25,
                 retry_seconds: float = 1.0, overdue: dt.timedelta = OVERDUE, sweep_seconds: float = SWEEP_SECONDS):
        self._db, self._queue, self._publisher = db, queue, publisher
        self._idle_seconds, self._retry_seconds = idle_seconds, retry_seconds
        self._overdue, self._sweep_seconds = overdue, sweep_seconds

    async def run(self, stop: asyncio.Event) -> None:
        problem: str | None = None
        next_sweep = asyncio.get_running_loop().time()
        while not stop.is_set():
            self._queue.arrived.clear()
            try:
                if asyncio.get_running_loop().time() >= next_sweep:
                    await self.sweep()
                    next_sweep = asyncio.get_running_loop().time() + self._sweep_seconds
                sent = await self.dispatch()
            except Exception as exc:  # noqa: BLE001 - the broker or the database is away: wait, try again
                text = getattr(exc, "message", None) or repr(exc)
                if problem is None:
                    log.warning("%s: cannot dispatch work (%s); it waits in the database", self._queue.name, text)
                problem = text
                await pause(stop, self._retry_seconds)
                continue
            if problem is not None:
                log.info("%s: dispatching work again", self._queue.name)
            problem = None
            if not sent:
                await pause(stop, self._idle_seconds, self._queue.arrived)

    async def dispatch(self) -> int:
        """Publish one batch of undispatched items; how many."""
        items = await self._db.run(self._queue.undispatched, DISPATCH_BATCH)
        if not items:
            return 0
        await asyncio.gather(*(self._publisher.at(i.id, i.item, i.priority, i.available_at) for i in items))
        await self._db.run(self._queue.mark_dispatched, items)
        return len(items)

    async def sweep(self) -> int:
        """Make the items whose message was lost undispatched again; how many."""
        lost = await self._db.run(self._queue.redispatch_overdue, self._overdue)
        if lost:
            log.warning("%s: %d item(s) available for over %s were never claimed (their message was lost): "
                        "dispatching them again", self._queue.name, lost, self._overdue,
                        extra={"queue": self._queue.name, "items": lost})
        return lost


class WorkConsumer:
    """One instance's competing consumers of a work queue: up to `workers` sagas at once."""

    def __init__(self, broker: Broker, db: Database, queue: WorkQueue, publisher: WorkPublisher,
                 attempt: Callable[[Claimed], Awaitable[Retried | None]], workers: int,
                 retry_seconds: float = 1.0, clock: Callable[[], dt.datetime] = utcnow):
        self._broker, self._db, self._queue, self._publisher = broker, db, queue, publisher
        self._attempt, self._workers, self._retry_seconds, self._clock = attempt, workers, retry_seconds, clock
        self._in_hand: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> None:
        await consume(self._broker, stop, self._workers, self._publisher.declare, self._on_message,
                      f"{self._queue.name} work", self._retry_seconds, drain=self._drain)

    async def _drain(self) -> None:
        if self._in_hand:
            await asyncio.wait(set(self._in_hand))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # The channel's consumer task is cancelled when the channel closes; the saga must not be.
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self._in_hand.add(task)
        task.add_done_callback(self._in_hand.discard)
        await asyncio.shield(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            item_id, item = decode(message.body)
        except ValueError as exc:
            await _settle(message.reject(requeue=False))        # to the dead-letter queue
            log.error("dead-lettered a message of %s that is not a work message: %s", self._publisher.name, exc,
                      extra={"alert": "dead_letter", "queue": self._queue.name, "reason": "MESSAGE_UNDECODABLE"})
            return
        priority = message.priority or 0
        try:
            found = await self._db.run(self._queue.claim_item, item_id, item)
            if isinstance(found, Claimed):
                await self._after(found, await self._attempt(found))
            elif found is not None:     # leased elsewhere, or waiting out a backoff: look again then
                await self._publisher.at(item_id, item, priority, found)
        except Exception as exc:  # noqa: BLE001 - the database or the broker is away: give it back
            log.warning("%s: item %d (%s) goes back to the queue: %s", self._queue.name, item_id, item,
                        getattr(exc, "message", None) or repr(exc))
            await asyncio.sleep(self._retry_seconds)
            await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())

    async def _after(self, claimed: Claimed, retried: Retried | None) -> None:
        """The next message for an item whose attempt did not end its work."""
        if retried is None:
            return
        if retried.parked is not None:
            await self._publisher.dead_letter(encode(claimed.id, claimed.item), claimed.priority,
                                              _dead_letter_headers(retried.parked))
            return
        wait = retried.delay if retried.delay is not None else dt.timedelta(seconds=self._queue.lease_seconds)
        await self._publisher.at(claimed.id, claimed.item, claimed.priority, self._clock() + wait)


async def _settle(outcome: Awaitable) -> None:
    """Ack, nack or reject: on a channel that has closed meanwhile it cannot be, and need not
    be; the broker gives the message back, and the item's row decides what its redelivery does."""
    with contextlib.suppress(Exception):
        await outcome


def _dead_letter_headers(parked: ParkedItem) -> dict:
    return {"x-diboas-reason": parked.reason, "x-diboas-attempts": parked.attempts,
            "x-diboas-dead-letter": parked.id, "x-diboas-error": parked.error[:500]}
