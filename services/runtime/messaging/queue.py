"""A reliable work queue in the service's own database (the spec's `financial.transactions`):
priorities, competing consumers, leases, retries with backoff.

  enqueue   in the transaction that creates the work (nothing queued for work that was rolled back)
  claim     takes the most urgent available item and leases it to one worker for a while; a
            worker that dies mid-way loses the lease and the item comes back (work resumes)
  done      removes the item, in the transaction that records the work's outcome
  retry     puts it back for later, with exponential backoff and jitter

Each item carries the W3C trace context (traceparent, tracestate) of the span that queued it,
and every claim of it (a retry too) returns that context: the work continues the trace of the
request that created it.

Competing consumers: on PostgreSQL, `FOR UPDATE SKIP LOCKED` lets workers in many processes
claim different items at once; SQLite's single writer serializes the claims.
"""
from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Callable, Mapping

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)

from ..db import Database
from ..tracing import current_trace_headers


def work_items_table(metadata: MetaData) -> Table:
    return Table(
        "work_items", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("queue", String(64), nullable=False),
        Column("item", String(128), nullable=False),
        Column("priority", Integer, nullable=False),          # higher first
        Column("available_at", DateTime(timezone=True), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("last_error", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("traceparent", String(64), nullable=False, server_default=""),   # W3C, of the span that queued it
        Column("tracestate", Text, nullable=False, server_default=""),
        Index("ix_work_items_queue_available_at", "queue", "available_at"),
    )


@dataclass(frozen=True)
class Claimed:
    id: int
    item: str
    attempts: int
    traceparent: str = ""       # the W3C context the item was queued in ("" when none)
    tracestate: str = ""


class WorkQueue:
    def __init__(self, db: Database, table: Table, name: str, lease: dt.timedelta = dt.timedelta(seconds=30),
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
                 rng: random.Random | None = None):
        self._db, self._t, self.name, self._lease, self._clock = db, table, name, lease, clock
        self._rng = rng or random.Random()

    def enqueue(self, connection: Connection, item: str, priority: int = 0,
                trace_context: Mapping[str, str] | None = None) -> None:
        """Queue `item` with a W3C trace context (traceparent, tracestate): by default the
        current span's, so the work continues the trace of the request that queued it."""
        now, carrier = self._clock(), current_trace_headers() if trace_context is None else trace_context
        connection.execute(insert(self._t).values(queue=self.name, item=item, priority=priority, available_at=now,
                                                  attempts=0, last_error="", created_at=now,
                                                  traceparent=carrier.get("traceparent", ""),
                                                  tracestate=carrier.get("tracestate", "")))

    def claim(self) -> Claimed | None:
        """The most urgent available item, leased to the caller (None when there is none)."""
        t, now = self._t, self._clock()
        with self._db.transaction() as connection:
            query = (select(t.c.id, t.c.item, t.c.attempts, t.c.traceparent, t.c.tracestate)
                     .where(t.c.queue == self.name, t.c.available_at <= now)
                     .order_by(t.c.priority.desc(), t.c.id).limit(1))
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = connection.execute(query).first()
            if row is None:
                return None
            connection.execute(update(t).where(t.c.id == row.id).values(
                available_at=now + self._lease, attempts=row.attempts + 1))
            return Claimed(row.id, row.item, row.attempts + 1, row.traceparent, row.tracestate)

    @property
    def lease_seconds(self) -> float:
        return self._lease.total_seconds()

    def renew(self, claimed: Claimed) -> bool:
        """Extend the lease of an item still held (a long step in progress); False when it was lost
        (it expired and another worker claimed it)."""
        t = self._t
        with self._db.transaction() as connection:
            renewed = connection.execute(update(t).where(t.c.id == claimed.id, t.c.attempts == claimed.attempts)
                                         .values(available_at=self._clock() + self._lease))
            return renewed.rowcount == 1

    def done(self, connection: Connection, claimed: Claimed) -> None:
        connection.execute(delete(self._t).where(self._t.c.id == claimed.id))

    def retry(self, claimed: Claimed, error: str, initial: float = 0.2, cap: float = 30.0) -> dt.timedelta:
        """Put the item back for later; returns the delay. A worker whose lease was lost (another
        worker holds the item now) changes nothing."""
        delay = dt.timedelta(seconds=min(cap, initial * 2 ** min(claimed.attempts - 1, 30)) * (0.5 + self._rng.random() / 2))
        with self._db.transaction() as connection:
            connection.execute(update(self._t).where(self._t.c.id == claimed.id, self._t.c.attempts == claimed.attempts)
                               .values(available_at=self._clock() + delay, last_error=error[:2000]))
        return delay

    def depth(self) -> int:
        with self._db.reading() as connection:
            return connection.execute(select(func.count()).select_from(self._t).where(self._t.c.queue == self.name)).scalar_one()
