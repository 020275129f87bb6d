"""The RabbitMQ connection of a service (messaging.transport: rabbitmq), and the names of the
broker objects the mesh declares.

One robust connection per service: aio-pika reconnects it by itself, and re-declares what was
declared through it, once the broker is back. The first connection is made on first use, not
at start: a service starts and serves while the broker is away, its relay and consumers wait,
and its health names the missing dependency (`problem`). Every channel asks for publisher
confirms: a publish returns only once the broker has taken the message.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError

from services.domain.errors import ServiceUnavailable

from ..config import Messaging
from ..loops import pause

log = logging.getLogger("diboas.rabbitmq")
CONNECT_TIMEOUT_SECONDS = 5.0
CLOSE_TIMEOUT_SECONDS = 2.0


class BrokerNames:
    """Every exchange and queue name, in one place, each starting with the topology's prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    @property
    def events_exchange(self) -> str:
        """The durable topic exchange every event is published to."""
        return f"{self.prefix}.events"

    def event_queue(self, subscriber: str) -> str:
        """A subscribing service's own durable queue, shared by all its instances."""
        return f"{self.prefix}.events.{subscriber}"

    def work_queue(self, queue: str) -> str:
        """A work queue's priority queue (queue: its topology name, financial.transactions),
        shared by the competing consumers of every instance."""
        return f"{self.prefix}.work.{queue}"

    def delay_queue(self, queue_name: str, milliseconds: int) -> str:
        """A delay queue of a work queue named by `work_queue`: its messages go back to that
        queue after `milliseconds`."""
        return f"{queue_name}.delay.{milliseconds}ms"

    def dead_letter_queue(self, queue_name: str) -> str:
        """The dead-letter queue of a queue named by one of the methods above."""
        return f"{queue_name}.dead"


class Broker:
    def __init__(self, settings: Messaging, client: str):
        self.names = BrokerNames(settings.prefix)
        self._url = settings.rabbitmq_url
        self._client = client
        self._connection: AbstractRobustConnection | None = None
        self._connecting = asyncio.Lock()
        self._problem: str | None = "not connected yet"
        parts = urlsplit(self._url)
        self.where = f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}{parts.path or '/'}"

    def problem(self) -> str | None:
        """None while connected to the broker, else why not (for health)."""
        if self._connection is not None and not self._connection.is_closed:
            return None
        return f"RabbitMQ at {self.where}: {self._problem or 'connection lost, reconnecting'}"

    async def connection(self) -> AbstractRobustConnection:
        """The service's connection, made on first use; ServiceUnavailable while the broker is away."""
        if self._connection is not None:
            return self._connection
        async with self._connecting:
            if self._connection is None:
                try:
                    self._connection = await aio_pika.connect_robust(
                        self._url, timeout=CONNECT_TIMEOUT_SECONDS, client_properties={"connection_name": self._client})
                except (OSError, asyncio.TimeoutError, AMQPError) as exc:
                    self._problem = str(exc) or type(exc).__name__
                    raise ServiceUnavailable(f"RabbitMQ at {self.where} is unreachable: {self._problem}",
                                             reason="BROKER_UNAVAILABLE") from None
                self._problem = None
                log.info("connected to RabbitMQ at %s", self.where)
        return self._connection

    async def channel(self, prefetch: int | None = None) -> AbstractRobustChannel:
        """A new channel with publisher confirms (a `mandatory` publish that no queue took raises,
        instead of passing for confirmed) and, for a consumer, at most `prefetch` unacknowledged
        messages at once."""
        channel = await (await self.connection()).channel(publisher_confirms=True, on_return_raises=True)
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
            self._problem = "closed"


async def consume(broker: Broker, stop: asyncio.Event, prefetch: int,
                  declare: Callable[[AbstractChannel], Awaitable[AbstractQueue]],
                  on_message: Callable[[AbstractIncomingMessage], Awaitable[Any]], what: str,
                  retry_seconds: float = 1.0, drain: Callable[[], Awaitable[None]] | None = None) -> None:
    """Consume the queue that `declare` declares on a new channel, with `on_message`, until
    `stop` is set; while the broker is away, wait and try again (said once, as is its return).
    With `drain`, a stop first cancels the consumer (no new deliveries), then awaits `drain()`
    (the messages in hand), and only then closes the channel."""
    away = False
    while not stop.is_set():
        try:
            channel = await broker.channel(prefetch=prefetch)
            queue = await declare(channel)
            tag = await queue.consume(on_message)
        except Exception as exc:  # noqa: BLE001 - the broker is away: wait, then try again
            if not away:
                log.warning("%s: cannot consume from RabbitMQ at %s (%s); waiting for it", what, broker.where, exc)
            away = True
            await pause(stop, retry_seconds)
            continue
        if away:
            log.info("%s: consuming from RabbitMQ at %s again", what, broker.where)
        away = False
        # The robust channel reconnects and consumes again by itself after an outage.
        await stop.wait()
        try:
            if drain is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(queue.cancel(tag), CLOSE_TIMEOUT_SECONDS)
                await drain()
        finally:
            # Closing the channel ends the consumer (a drain cut short too); what it held
            # unacknowledged goes back to the queue.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_SECONDS)
