"""Events over RabbitMQ (messaging.transport: rabbitmq).

  producer   the outbox and its relay stay; RabbitTransport is the relay's EventTransport: each
             delivery (one per subscriber of the event's topic) is published to the durable topic
             exchange with routing key "<subscriber>.<topic>", persistent, and `deliver` returns
             only once the broker has confirmed it, so the relay marks a row delivered only then.
             A broker that is away is the relay's "subscriber down": retried with backoff, for as
             long as it takes.
  subscriber each subscribing service has one durable quorum queue, shared by all its instances,
             bound with "<subscriber>.<topic>" for each topic it subscribes to, with a dead-letter
             queue. EventConsumer takes messages from it and hands each to the service's EventSink
             (the same handling as the embedded DeliverEvent: the envelope opened, the handler and
             the inbox record in one database transaction), and acknowledges a message only after
             that transaction committed. A duplicate changes nothing and is acknowledged.
             A tampered, stale or undecodable message goes to the dead-letter queue at once; a
             handler that fails is tried again (the broker counts deliveries) up to the delivery
             policy's attempts, then goes there too. Each dead letter is an error log line with
             "alert": "dead_letter" and the diboas_dead_letters_total metric.

The queues and their bindings are declared by the producer as well as by the subscriber (both
idempotently), so an event published before its subscriber first started waits in its queue.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Mapping, Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from google.protobuf.message import DecodeError

from diboas.events.v1 import events_pb2
from services.domain import errors

from .rabbit import Broker, BrokerNames, consume
from .relay import DEAD_LETTERS, DeliveryPolicy, outcomes_of
from .secure import MessageRejected
from .sink import EventSink

log = logging.getLogger("diboas.rabbitmq")
PUBLISH_TIMEOUT_SECONDS = 10.0
COUNT_TIMEOUT_SECONDS = 2.0      # for the count of what waits in the subscribers' queues
PREFETCH = 32                    # messages a consumer holds unacknowledged at once


def routing_key(subscriber: str, topic: str) -> str:
    return f"{subscriber}.{topic}"


async def declare_subscription(channel: AbstractChannel, names: BrokerNames, subscriber: str,
                               topics: Sequence[str]) -> tuple[AbstractExchange, AbstractQueue]:
    """The events exchange, the subscriber's queue with its dead-letter queue, and a binding per
    topic: declared the same way by producers and by the subscriber (idempotent)."""
    exchange = await channel.declare_exchange(names.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    name = names.event_queue(subscriber)
    dead = names.dead_letter_queue(name)
    await channel.declare_queue(dead, durable=True, arguments={"x-queue-type": "quorum"})
    queue = await channel.declare_queue(name, durable=True, arguments={
        "x-queue-type": "quorum", "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    for topic in topics:
        await queue.bind(exchange, routing_key=routing_key(subscriber, topic))
    return exchange, queue


def _unavailable(broker: Broker, exc: BaseException) -> errors.ServiceUnavailable:
    return errors.ServiceUnavailable(f"RabbitMQ at {broker.where} did not take the event: {exc or type(exc).__name__}",
                                     reason="BROKER_UNAVAILABLE")


class RabbitTransport:
    """The relay's EventTransport over the broker. `subscriptions`: subscriber -> its topics."""

    def __init__(self, broker: Broker, subscriptions: Mapping[str, Sequence[str]]):
        self._broker, self._subscriptions = broker, subscriptions
        self._exchange: AbstractExchange | None = None
        self._opening = asyncio.Lock()
        self._waiting = 0

    async def _ready(self) -> AbstractExchange:
        async with self._opening:
            if self._exchange is None or self._exchange.channel.is_closed:
                channel = await self._broker.channel()
                self._exchange = await channel.declare_exchange(self._broker.names.events_exchange,
                                                                aio_pika.ExchangeType.TOPIC, durable=True)
                for subscriber, topics in self._subscriptions.items():
                    await declare_subscription(channel, self._broker.names, subscriber, topics)
            return self._exchange

    async def waiting(self) -> int:
        """Messages published to the subscribers' queues and not taken by a consumer yet (the
        broker's ready count); while the broker cannot be asked, the last count it gave. It asks
        only over a connection the relay has open: a count never connects or reconnects."""
        if self._broker.problem() is not None:
            return self._waiting
        try:
            async with asyncio.timeout(COUNT_TIMEOUT_SECONDS):
                # On the AMQP channel itself: aio-pika's robust channel answers a queue it
                # declared before with that declaration's counts.
                channel = await (await self._ready()).channel.get_underlay_channel()
                counts = [(await channel.queue_declare(self._broker.names.event_queue(subscriber), passive=True))
                          .message_count for subscriber in self._subscriptions]
        except Exception as exc:  # noqa: BLE001 - the broker away: the outbox keeps what it could not send
            log.debug("could not count the messages waiting in RabbitMQ: %s", exc or type(exc).__name__)
            return self._waiting
        self._waiting = sum(counts)
        return self._waiting

    async def deliver_all(self, subscriber: str, deliveries: list[tuple[events_pb2.EventEnvelope, int]]
                          ) -> list[Exception | None]:
        """Publish each event (at once, each confirmed by the broker on its own)."""
        return outcomes_of(await asyncio.gather(*(self.deliver(subscriber, envelope, attempt)
                                                  for envelope, attempt in deliveries), return_exceptions=True))

    async def deliver(self, subscriber: str, envelope: events_pb2.EventEnvelope, attempt: int) -> None:
        if subscriber not in self._subscriptions:
            raise errors.FailedPrecondition(f"'{subscriber}' subscribes to nothing this service publishes",
                                            reason="UNKNOWN_SUBSCRIBER")
        try:
            exchange = await self._ready()
            message = aio_pika.Message(envelope.SerializeToString(), message_id=envelope.id, type=envelope.type,
                                       content_type="application/protobuf",
                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, routing_key(subscriber, envelope.type), mandatory=True,
                                   timeout=PUBLISH_TIMEOUT_SECONDS)
        except errors.DomainError:
            raise
        except Exception as exc:  # noqa: BLE001 - not confirmed, whatever the cause: the relay tries again
            self._exchange = None
            raise _unavailable(self._broker, exc) from None


class EventConsumer:
    """A subscriber's consumer of its queue, until stopped; it waits while the broker is away."""

    def __init__(self, broker: Broker, sink: EventSink, subscriber: str, service: str,
                 policy: DeliveryPolicy = DeliveryPolicy(), retry_seconds: float = 1.0):
        self._broker, self._sink, self._subscriber, self._service = broker, sink, subscriber, service
        self._policy, self._retry_seconds = policy, retry_seconds

    async def run(self, stop: asyncio.Event) -> None:
        async def declare(channel: AbstractChannel) -> AbstractQueue:
            return (await declare_subscription(channel, self._broker.names, self._subscriber, self._sink.topics))[1]
        await consume(self._broker, stop, PREFETCH, declare, self._on_message, f"{self._subscriber} events",
                      self._retry_seconds)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        attempt = int((message.headers or {}).get("x-delivery-count") or 0) + 1
        try:
            envelope = events_pb2.EventEnvelope.FromString(message.body)
        except DecodeError:
            await self._dead_letter(message, None, attempt, "MESSAGE_UNDECODABLE", "the body is not an EventEnvelope")
            return
        try:
            await self._sink.handle(envelope, attempt)
        except MessageRejected as exc:
            await self._dead_letter(message, envelope, attempt, exc.reason, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - a handler failure: tried again, then dead-lettered
            text = getattr(exc, "message", None) or repr(exc)
            if attempt >= self._policy.max_attempts:
                await self._dead_letter(message, envelope, attempt, "HANDLER_FAILED", text)
                return
            log.warning("%s: handling %s %s failed (attempt %d of %d): %s", self._subscriber, envelope.type,
                        envelope.id, attempt, self._policy.max_attempts, text,
                        extra={"event_id": envelope.id, "subscriber": self._subscriber})
            await asyncio.sleep(min(self._policy.max_backoff, self._policy.initial_backoff * 2 ** (attempt - 1)))
            await message.nack(requeue=True)
            return
        await message.ack()          # after the handler's transaction committed

    async def _dead_letter(self, message: AbstractIncomingMessage, envelope, attempt: int, reason: str,
                           text: str) -> None:
        """To the dead-letter queue (the broker moves it there), with the alert and the metric."""
        topic = envelope.type if envelope is not None else (message.type or "")
        event_id = envelope.id if envelope is not None else (message.message_id or "")
        await message.reject(requeue=False)
        DEAD_LETTERS.labels(self._service, self._subscriber, topic, reason).inc()
        log.error("dead-lettered %s %s for %s after %d attempt(s) (%s): %s; it waits in %s", topic, event_id,
                  self._subscriber, attempt, reason, text,
                  self._broker.names.dead_letter_queue(self._broker.names.event_queue(self._subscriber)),
                  extra={"alert": "dead_letter", "event_id": event_id, "subscriber": self._subscriber, "topic": topic,
                         "reason": reason})

