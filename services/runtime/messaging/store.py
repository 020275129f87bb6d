"""The messaging tables each service keeps in its own database, and the outbox and inbox that
use them inside the caller's transaction.

  outbox        events a service produced, written in the same transaction as the change they report
  deliveries    one row per (event, subscriber): where the relay is with it
  inbox         (consumer, event id) of every event a consumer has handled: redelivery is a no-op
  dead_letters  the audit record of every delivery that was given up on, and of its replays
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

from google.protobuf.message import Message
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Select,
    String,
    Table,
    Text,
    func,
    insert,
    select,
)

from diboas.events.v1 import events_pb2
from services.domain.clock import utcnow

from ..db import BigId, param
from ..prepared import Prepared
from ..tracing import current_trace_headers
from ..wire import timestamp
from .secure import KeyRing, seal

PENDING, DELIVERED, DEAD = "PENDING", "DELIVERED", "DEAD"


@dataclass(frozen=True)
class MessagingTables:
    outbox: Table
    deliveries: Table
    inbox: Table
    dead_letters: Table


def messaging_tables(metadata: MetaData) -> MessagingTables:
    """Add the messaging tables to a service's schema (its migrations create them with
    services/runtime/migrations.py)."""
    outbox = Table(
        "outbox", metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("topic", String(128), nullable=False),
        Column("envelope", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    deliveries = Table(
        "deliveries", metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("outbox_id", BigId, ForeignKey("outbox.id"), nullable=False),
        Column("subscriber", String(64), nullable=False),
        Column("state", String(16), nullable=False),
        Column("attempts", Integer, nullable=False),       # handler failures, counted against the policy
        Column("retries", Integer, nullable=False),        # every failed try, for the backoff
        Column("next_attempt_at", DateTime(timezone=True), nullable=False),
        Column("last_error", Text, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Index("ix_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )
    inbox = Table(
        "inbox", metadata,
        Column("consumer", String(64), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("handled_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("consumer", "event_id"),
    )
    dead_letters = Table(
        "dead_letters", metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("delivery_id", BigId, ForeignKey("deliveries.id"), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("topic", String(128), nullable=False),
        Column("subscriber", String(64), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("reason", String(64), nullable=False),
        Column("error", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("replayed_at", DateTime(timezone=True)),
    )
    return MessagingTables(outbox, deliveries, inbox, dead_letters)


class Outbox:
    """Writes events into the producer's outbox, in the transaction of the change they report."""

    def __init__(self, tables: MessagingTables, source: str, subscribers_of: Callable[[str], Sequence[str]],
                 ring: KeyRing | None, clock: Callable[[], dt.datetime] = utcnow):
        self._t = tables
        self._source = source
        self._subscribers_of = subscribers_of
        self._ring = ring
        self._clock = clock
        self._on_commit: list[Callable[[], None]] = []
        self._add_event = Prepared(insert(tables.outbox).returning(tables.outbox.c.id))
        self._add_deliveries = Prepared(insert(tables.deliveries))

    @property
    def undelivered(self) -> Select:
        """The statement that counts the deliveries not made yet (to every subscriber)."""
        d = self._t.deliveries
        return select(func.count()).select_from(d).where(d.c.state == PENDING)

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from any thread) each time a transaction that added events has committed."""
        self._on_commit.append(listener)

    def committed(self) -> None:
        for listener in self._on_commit:
            listener()

    def add(self, connection: Connection, topic: str, subject: str, event: Message, *, sensitive: bool = True) -> str:
        """Record `event` (a protobuf message) for every subscriber of `topic`; returns the event id.
        Sensitive payloads (amounts, owners) are encrypted."""
        now = self._clock()
        envelope = events_pb2.EventEnvelope(
            id=uuid.uuid4().hex, source=self._source, spec_version="1.0", type=topic, subject=subject,
            data_content_type="application/protobuf", data_schema=event.DESCRIPTOR.full_name)
        envelope.time.CopyFrom(timestamp(now))
        carrier = current_trace_headers()
        envelope.traceparent, envelope.tracestate = carrier.get("traceparent", ""), carrier.get("tracestate", "")
        seal(envelope, event.SerializeToString(), self._ring if sensitive else None)
        outbox_id = self._add_event.run(connection, dict(
            event_id=envelope.id, topic=topic, envelope=envelope.SerializeToString(), created_at=now),
        ).scalar_one()
        subscribers = list(self._subscribers_of(topic))
        if subscribers:
            self._add_deliveries.run(connection, [
                {"outbox_id": outbox_id, "subscriber": s, "state": PENDING, "attempts": 0, "retries": 0,
                 "next_attempt_at": now, "last_error": "", "updated_at": now} for s in subscribers])
        return envelope.id


class Inbox:
    """Records which events a consumer has handled, in the handler's own transaction."""

    def __init__(self, tables: MessagingTables, consumer: str):
        self._t = tables
        self._consumer = consumer
        inbox = tables.inbox.c
        self._seen = Prepared(select(inbox.event_id).where(inbox.consumer == consumer,
                                                           inbox.event_id == param(inbox.event_id, "event_id")))
        self._record = Prepared(insert(tables.inbox))

    def first_time(self, connection: Connection, event_id: str, now: dt.datetime) -> bool:
        """True (and the event recorded) if this consumer has not handled `event_id` yet. A
        concurrent duplicate makes the caller's commit fail on the primary key: it then retries
        and sees False."""
        if self._seen.run(connection, {"event_id": event_id}).first():
            return False
        self._record.run(connection, dict(consumer=self._consumer, event_id=event_id, handled_at=now))
        return True
