"""Over RabbitMQ, a producer hears its own events back: each instance that asks for it gets a
queue of its own (exclusive: it goes away with the instance's connection) bound to the events
exchange for the topics it names, whoever the subscriber, and is told the subject of every
event any instance publishes on them. It is a wake-up, never the event's handling: nothing in
the message is trusted beyond being a hint to look again, and a message lost (the queue is
declared only once something asks, and is gone while the broker is away) only delays that look.
"""
from __future__ import annotations

import asyncio
import uuid
from typing import Callable, Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from google.protobuf.message import DecodeError

from diboas.events.v1 import events_pb2

from ..loops import pause
from .rabbit import Broker, consume

PREFETCH = 256


class EventEcho:
    """Calls `heard(subject)` for each event published on `topics`, from the first `wanted()` on."""

    def __init__(self, broker: Broker, service: str, topics: Sequence[str], heard: Callable[[str], None]):
        self._broker, self._topics, self._heard = broker, list(topics), heard
        self._queue_name = f"{broker.names.prefix}.echo.{service}.{uuid.uuid4().hex[:12]}"
        self._wanted = asyncio.Event()

    def wanted(self) -> None:
        """Start listening (at once if it has started already; idempotent)."""
        self._wanted.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not (self._wanted.is_set() or stop.is_set()):
            await pause(stop, 3600, self._wanted)
        if stop.is_set():
            return
        await consume(self._broker, stop, PREFETCH, self._declare, self._on_message,
                      f"echo of {', '.join(self._topics)}")

    async def _declare(self, channel: AbstractChannel) -> AbstractQueue:
        exchange = await channel.declare_exchange(self._broker.names.events_exchange, aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        queue = await channel.declare_queue(self._queue_name, exclusive=True, auto_delete=True)
        for topic in self._topics:
            await queue.bind(exchange, routing_key=f"*.{topic}")     # "<subscriber>.<topic>"
        return queue

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            subject = events_pb2.EventEnvelope.FromString(message.body).subject
        except DecodeError:
            subject = ""
        await message.ack()
        if subject:
            self._heard(subject)
