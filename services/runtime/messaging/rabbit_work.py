"""A work queue over RabbitMQ (messaging.transport: rabbitmq), for many instances at once.

  truth     the work_items rows stay the truth: enqueued in the transaction that creates the
            work, leased, retried, parked and replayed exactly as in queue.py. A message only
            says "look at item N": one naming an item that is gone (its work ended, or it was
            parked) is acknowledged and forgotten, so a duplicate changes nothing, and nothing
            else in a message is trusted.
  dispatch  WorkDispatcher publishes each new (or replayed) item once to the queue's priority
            queue (persistent, the item's priority, publisher confirms) and marks it dispatched
            once the broker confirmed.
  consume   WorkConsumer: competing consumers in every instance. For each message it claims
            the item named (WorkQueue.claim_item): the lease keeps a saga to one instance at a
            time, and a message for an item leased elsewhere waits out the lease. A message is
            acknowledged only once the item's outcome is written, or another message for it
            was confirmed: a consumer that dies gives its messages back to the broker, and the
            redelivery is the next attempt (a crash loop is parked at claim, as in queue.py).
  backoff   a retried item's next message goes through delay queues: one per power of two of
            milliseconds from 125 ms, each holding its messages that long (a per-queue TTL)
            before dead-lettering them into the priority queue. A delay is spent in the
            largest tier it fills; what remains is spent the same way on arrival.
  dead      a parked item gets the audit record, alert and metric of queue.py, and a copy in the
            queue's dead-letter queue (the newest DEAD_LETTERS_KEPT) for the broker's tools; a
            message that is not a work message goes there at once. `diboas dead-letters`
            replays from the audit record.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
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
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the body is not JSON") from None
    if (not isinstance(fields, dict) or set(fields) != {"id", "item"} or type(fields["id"]) is not int
            or not isinstance(fields["item"], str) or not 0 < fields["id"] < 2 ** 63 or not 0 < len(fields["item"]) <= 128):
        raise ValueError('the body is not {"id": <item id>, "item": "<item>"}')
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
    is away it waits (the items wait in the database) and says so once."""

    def __init__(self, db: Database, queue: WorkQueue, publisher: WorkPublisher, idle_seconds: float = 0.05,
                 retry_seconds: float = 1.0):
        self._db, self._queue, self._publisher = db, queue, publisher
        self._idle_seconds, self._retry_seconds = idle_seconds, retry_seconds

    async def run(self, stop: asyncio.Event) -> None:
        away = False
        while not stop.is_set():
            try:
                sent = await self.dispatch()
            except ServiceUnavailable as exc:
                if not away:
                    log.warning("%s: cannot dispatch work (%s); it waits in the database", self._queue.name, exc.message)
                away = True
                await pause(stop, self._retry_seconds)
                continue
            except Exception:  # noqa: BLE001 - a database hiccup: the next round tries again
                log.exception("%s: could not dispatch work; trying again", self._queue.name)
                await pause(stop, self._retry_seconds)
                continue
            if away:
                log.info("%s: dispatching work to RabbitMQ again", self._queue.name)
            away = False
            if not sent:
                await pause(stop, self._idle_seconds)

    async def dispatch(self) -> int:
        """Publish one batch of undispatched items; how many."""
        items = await self._db.run(self._queue.undispatched, DISPATCH_BATCH)
        if not items:
            return 0
        await asyncio.gather(*(self._publisher.at(i.id, i.item, i.priority, i.available_at) for i in items))
        await self._db.run(self._queue.mark_dispatched, [i.id for i in items])
        return len(items)


class WorkConsumer:
    """One instance's competing consumers of a work queue: up to `workers` sagas at once."""

    def __init__(self, broker: Broker, db: Database, queue: WorkQueue, publisher: WorkPublisher,
                 attempt: Callable[[Claimed], Awaitable[Retried | None]], workers: int,
                 retry_seconds: float = 1.0, clock: Callable[[], dt.datetime] = utcnow):
        self._broker, self._db, self._queue, self._publisher = broker, db, queue, publisher
        self._attempt, self._workers, self._retry_seconds, self._clock = attempt, workers, retry_seconds, clock

    async def run(self, stop: asyncio.Event) -> None:
        await consume(self._broker, stop, self._workers, self._publisher.declare, self._on_message,
                      f"{self._queue.name} work", self._retry_seconds)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            item_id, item = decode(message.body)
        except ValueError as exc:
            await message.reject(requeue=False)        # to the dead-letter queue
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
            try:
                await message.nack(requeue=True)
            except Exception:  # noqa: BLE001 - the channel is gone: the broker gives it back by itself
                pass
            return
        await message.ack()

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


def _dead_letter_headers(parked: ParkedItem) -> dict:
    return {"x-diboas-reason": parked.reason, "x-diboas-attempts": parked.attempts,
            "x-diboas-dead-letter": parked.id, "x-diboas-error": parked.error[:500]}
