"""The subscriber's side of event delivery: EventSinkService.DeliverEvents (what the relay
calls: one outcome per event) and DeliverEvent (one event).

Each event is handled on its own: its envelope is opened (a tampered, stale or undecryptable
one is rejected: the relay dead-letters it), then the topic's handler runs and the event is
recorded in the inbox in one database transaction, so a redelivered event changes nothing.
All of it runs in a CONSUMER span "process <topic>" that continues the trace of the span that
produced the event. The events of one DeliverEvents call are handled at once, each in its own
database transaction (SQLite's group commit puts them in one); one that fails changes nothing
of the others.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from diboas.events.v1 import events_pb2, events_pb2_grpc
from services.domain import errors
from services.domain.clock import utcnow

from ..db import Database
from ..status import answer_each
from ..tracing import MessageTracing
from .secure import KeyRing, unseal
from .store import Inbox, MessagingTables

log = logging.getLogger("diboas.events")
MAX_DELIVERIES = 100        # events in one DeliverEvents call

# handler(connection, envelope, payload, now): the effect of one event, inside the inbox's transaction
Handler = Callable[[Connection, events_pb2.EventEnvelope, bytes, dt.datetime], None]


class EventSink(events_pb2_grpc.EventSinkServiceServicer):
    def __init__(self, db: Database, tables: MessagingTables, consumer: str, ring: KeyRing,
                 handlers: dict[str, Handler], max_age: dt.timedelta = dt.timedelta(days=7),
                 clock: Callable[[], dt.datetime] = utcnow,
                 tracing: MessageTracing | None = None, domain: str = ""):
        self._db, self._consumer, self._inbox, self._ring = db, consumer, Inbox(tables, consumer), ring
        self._domain = domain or consumer        # of the ErrorInfo in a refused delivery's outcome
        self._handlers, self._max_age, self._clock = handlers, max_age, clock
        self._tracing = tracing or MessageTracing()

    def _handle(self, envelope: events_pb2.EventEnvelope, payload: bytes, handler: Handler) -> bool:
        """Run the handler once per event id; True when it had run before (a duplicate)."""
        for attempt in (1, 2):
            try:
                with self._db.transaction() as connection:
                    now = self._clock()
                    if not self._inbox.first_time(connection, envelope.id, now):
                        return True
                    handler(connection, envelope, payload, now)
                    return False
            except IntegrityError:
                if attempt == 2:  # a concurrent delivery of the same event committed first
                    raise
        raise AssertionError("unreachable")

    async def handle(self, envelope: events_pb2.EventEnvelope, attempt: int) -> bool:
        """Open the envelope, then run its handler and record it in the inbox in one transaction;
        True when the event had been handled before (a duplicate, which changes nothing). Both
        transports end here: DeliverEvent (embedded) and the broker's consumer (rabbit_events.py)."""
        handler = self._handlers.get(envelope.type)
        if handler is None:
            raise errors.FailedPrecondition(f"no handler for events of type '{envelope.type}'",
                                            reason="NO_HANDLER")
        with self._tracing.processing(envelope.type, envelope.id, envelope.traceparent, envelope.tracestate,
                                      attempt=attempt, conversation=envelope.subject,
                                      consumer=self._consumer) as span:
            payload = unseal(envelope, self._ring, self._max_age, now=self._clock())
            duplicate = await self._db.run(self._handle, envelope, payload, handler)
            if span is not None:
                span.set_attribute("messaging.diboas.duplicate", duplicate)
        return duplicate

    @property
    def topics(self) -> list[str]:
        return sorted(self._handlers)

    async def DeliverEvent(self, request, context):
        duplicate = await self.handle(request.envelope, request.attempt)
        return events_pb2.DeliverEventResponse(duplicate=duplicate)

    async def DeliverEvents(self, request, context):
        outcomes = await answer_each(request.deliveries, self._delivered, self._domain, most=MAX_DELIVERIES,
                                     field="deliveries")
        return events_pb2.DeliverEventsResponse(outcomes=[
            events_pb2.DeliveryOutcome(status=status, duplicate=bool(duplicate)) for status, duplicate in outcomes])

    async def _delivered(self, delivery: events_pb2.DeliverEventRequest) -> bool:
        """One delivery of a DeliverEvents call, as DeliverEvent handles it; an unexpected failure
        is logged here, with the event it was, and answered INTERNAL (HANDLER_ERROR)."""
        envelope = delivery.envelope
        try:
            return await self.handle(envelope, delivery.attempt)
        except errors.DomainError:
            raise
        except Exception as exc:  # noqa: BLE001 - one event's bug must not fail the others' answers
            log.error("unhandled error handling %s %s", envelope.type, envelope.id, exc_info=exc,
                      extra={"event_id": envelope.id, "topic": envelope.type})
            raise errors.Internal(f"handling event {envelope.id} failed", reason="HANDLER_ERROR") from None
