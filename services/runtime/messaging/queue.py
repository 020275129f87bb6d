"""A reliable work queue in the service's own database (the spec's `financial.transactions`):
priorities, competing consumers, leases, retries with backoff, dead letters.

  enqueue   in the transaction that creates the work (nothing queued for work that was rolled back)
  claim     takes the most urgent available item and leases it to one worker for a while; a
            worker that dies mid-way loses the lease and the item comes back (work resumes); an
            item whose every attempt so far ended with its worker gone (a crash loop) is parked
            once its attempts are spent, instead of being run again
  done      removes the item, in the transaction that records the work's outcome
  retry     puts it back for later, with exponential backoff and jitter; once the queue's policy
            is spent (max attempts, or max age since the item was queued) it parks the item
            instead: a dead letter, not retried, with an audit record, an error log line with
            "alert": "dead_letter" and the diboas_work_items_parked_total metric
  defer     puts a claimed item back for later: its work waits for something outside it (a
            review), which is an outcome, not a failure: the retry policy starts again (the
            attempts so far are forgiven, its age counts from when it is due), and until it is
            claimed again the backlog (`held`) does not count it
  replay    puts parked items back on the queue with a fresh attempt count (the audit stays)

Each item carries the W3C trace context (traceparent, tracestate) of the span that queued it,
and every claim of it (a retry too) returns that context: the work continues the trace of the
request that created it.

Competing consumers: on PostgreSQL, `FOR UPDATE SKIP LOCKED` lets workers in many processes
claim different items at once; SQLite's single writer serializes the claims.

Over RabbitMQ (messaging.transport: rabbitmq, rabbit_work.py) the rows stay the truth and the
broker brings the wake-ups: `undispatched` and `mark_dispatched` let a dispatcher publish each
new item once, and `claim_item` claims the one item a message names (the same lease, attempt
count and crash-loop parking as `claim`).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import random
from dataclasses import dataclass
from typing import Callable, Mapping

from prometheus_client import Counter
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    delete,
    false,
    func,
    insert,
    select,
    true,
    update,
)

from services.domain.clock import utcnow
from services.domain.errors import NotFound

from ..config import QueuePolicy
from ..db import BigId, Database, as_utc, param
from ..prepared import Prepared
from ..tracing import current_trace_headers

log = logging.getLogger("diboas.queue")
PARKED = Counter("diboas_work_items_parked", "Work items given up on and parked as dead letters", ["queue", "reason"])
MAX_ATTEMPTS, MAX_AGE = "MAX_ATTEMPTS", "MAX_AGE"


def work_items_table(metadata: MetaData) -> Table:
    return Table(
        "work_items", metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("queue", String(64), nullable=False),
        Column("item", String(128), nullable=False),
        Column("priority", Integer, nullable=False),          # higher first
        Column("available_at", DateTime(timezone=True), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("last_error", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("traceparent", String(64), nullable=False, server_default=""),   # W3C, of the span that queued it
        Column("tracestate", Text, nullable=False, server_default=""),
        # A broker message carries the item (messaging.transport: rabbitmq); unused by the embedded queue.
        Column("dispatched", Boolean, nullable=False, server_default=false()),
        # Put back by `defer`: it waits for something outside the service (a review), not for the
        # service's workers, so the backlog does not count it. A claim clears it.
        Column("deferred", Boolean, nullable=False, server_default=false()),
        # The attempts made before its last deferral: a deferral is an outcome, so the retry
        # policy counts only the attempts after it. `attempts` itself only grows: it is the
        # claim's fencing token (renew, retry and defer name the attempt they hold).
        Column("forgiven", Integer, nullable=False, server_default="0"),
        Index("ix_work_items_queue_available_at", "queue", "available_at"),
    )


def parked_work_items_table(metadata: MetaData) -> Table:
    """The audit record of every parked item (its dead letter), and of its replay."""
    return Table(
        "parked_work_items", metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("queue", String(64), nullable=False),
        Column("item", String(128), nullable=False),
        Column("priority", Integer, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("reason", String(64), nullable=False),           # MAX_ATTEMPTS or MAX_AGE
        Column("error", Text, nullable=False),                  # the last attempt's
        Column("queued_at", DateTime(timezone=True), nullable=False),
        Column("parked_at", DateTime(timezone=True), nullable=False),
        Column("parked_by", String(128), nullable=False),       # the worker that gave up
        Column("replayed_at", DateTime(timezone=True)),
        Column("replayed_by", String(128), nullable=False),     # who replayed it
        Column("traceparent", String(64), nullable=False, server_default=""),   # the item's, kept for a replay
        Column("tracestate", Text, nullable=False, server_default=""),
        Index("ix_parked_work_items_queue_item", "queue", "item"),
    )


@dataclass(frozen=True)
class ParkedItem:
    id: int
    queue: str
    item: str
    priority: int
    attempts: int
    reason: str
    error: str
    queued_at: dt.datetime
    parked_at: dt.datetime
    parked_by: str
    replayed_at: dt.datetime | None
    replayed_by: str
    traceparent: str = ""
    tracestate: str = ""


@dataclass(frozen=True)
class Retried:
    """What retry did: rescheduled the item after `delay`, parked it, or (lost) nothing, because
    another worker holds it now."""
    delay: dt.timedelta | None = None
    parked: ParkedItem | None = None

    @property
    def lost(self) -> bool:
        return self.delay is None and self.parked is None


def _parked(row) -> ParkedItem:
    return ParkedItem(**{**row._asdict(), "queued_at": as_utc(row.queued_at), "parked_at": as_utc(row.parked_at),
                         "replayed_at": as_utc(row.replayed_at)})


@dataclass(frozen=True)
class Claimed:
    id: int
    item: str
    attempts: int
    traceparent: str = ""       # the W3C context the item was queued in ("" when none)
    tracestate: str = ""
    priority: int = 0


@dataclass(frozen=True)
class Undispatched:
    """An item to publish to the broker: its message names `id` and `item`."""
    id: int
    item: str
    priority: int
    available_at: dt.datetime


class WorkQueue:
    def __init__(self, db: Database, table: Table, name: str, lease: dt.timedelta | None = None,
                 clock: Callable[[], dt.datetime] = utcnow,
                 rng: random.Random | None = None, *, parked: Table, policy: QueuePolicy = QueuePolicy(),
                 worker: str = ""):
        self._db, self._t, self.name, self._clock = db, table, name, clock
        self._lease = lease if lease is not None else dt.timedelta(seconds=policy.lease_seconds)
        self._rng = rng or random.Random()
        self._parked, self.policy, self._worker = parked, policy, worker[:128]   # parked_by's width
        # Set (from the event loop) when an item was queued for whoever takes work from the table:
        # the workers, or the dispatcher over RabbitMQ, wake up instead of waiting out their pause.
        self.arrived = asyncio.Event()
        c = table.c
        # The statements of every claim, renewal and outcome, built once (db.param).
        self._next = (select(table).where(c.queue == name, c.available_at <= param(c.available_at, "now"))
                      .order_by(c.priority.desc(), c.id).limit(1))
        self._lease_it = update(table).where(c.id == param(c.id, "item_id")).values(
            available_at=param(c.available_at, "until"), attempts=param(c.attempts, "new_attempts"), deferred=false())
        # An id alone never names an item: SQLite gives a deleted row's id to the next row when it
        # was the highest, so what was read before an item ended must not reach the next one.
        self._renew = (update(table).where(c.id == param(c.id, "item_id"), c.item == param(c.item, "item_name"),
                                           c.attempts == param(c.attempts, "held"))
                       .values(available_at=param(c.available_at, "until")))
        self._dispatched = (update(table).where(c.id == param(c.id, "item_id"), c.item == param(c.item, "item_name"))
                            .values(dispatched=true()))
        self._add = Prepared(insert(table).returning(c.id))
        self._done = Prepared(delete(table).where(c.id == param(c.id, "item_id"), c.item == param(c.item, "item")))
        self._count = select(func.count()).select_from(table).where(c.queue == name, c.deferred == false())
        self._one_waiting = (select(c.id).where(c.queue == name, c.available_at <= param(c.available_at, "now"))
                             .limit(1))

    def enqueue(self, connection: Connection, item: str, priority: int = 0,
                trace_context: Mapping[str, str] | None = None, *, leased: bool = False) -> Claimed | None:
        """Queue `item` with a W3C trace context (traceparent, tracestate): by default the
        current span's, so the work continues the trace of the request that queued it. With
        `leased`, the item is queued already claimed by the caller for its first attempt (as if
        `claim` had just taken it: the lease keeps other workers off it, and brings it back to
        them if the caller never writes an outcome); that claim is returned."""
        now, carrier = self._clock(), current_trace_headers() if trace_context is None else trace_context
        traceparent, tracestate = carrier.get("traceparent", ""), carrier.get("tracestate", "")
        item_id = self._add.run(connection, dict(
            queue=self.name, item=item, priority=priority, available_at=now + self._lease if leased else now,
            attempts=1 if leased else 0, last_error="", created_at=now, traceparent=traceparent,
            tracestate=tracestate)).scalar_one()
        if not leased:
            return None
        return Claimed(item_id, item, 1, traceparent, tracestate, priority)

    @property
    def held(self) -> Select:
        """The statement that counts the items the queue holds now (queued, leased or waiting out
        a backoff), in every instance's hands; not those deferred (waiting for something outside
        the service, such as a review, for as long as that takes)."""
        return self._count

    def anything_waiting(self) -> bool:
        """Whether an item waits for a worker now (queued, or a retry that fell due), in every
        instance's hands: not one that a worker holds, nor one still waiting out its backoff."""
        with self._db.reading() as connection:
            return connection.execute(self._one_waiting, {"now": self._clock()}).first() is not None

    def claim(self) -> Claimed | None:
        """The most urgent available item, leased to the caller (None when there is none). An item
        whose attempts are already spent got there without an outcome from its last worker (the
        lease ran out: the worker, or its process, died on it every time); it is parked, not run
        again, and the next item is looked at."""
        now, parked, claimed = self._clock(), [], None
        with self._db.transaction() as connection:
            query = self._next
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            while claimed is None and (row := connection.execute(query, {"now": now}).first()) is not None:
                claimed = self._lease_or_park(connection, row, now, parked)
        self._alert_once_committed(parked)
        return claimed

    def claim_item(self, item_id: int, item: str) -> Claimed | dt.datetime | None:
        """Claim the one item a broker message names: Claimed; or, while it is not available yet
        (leased to a worker, or waiting out a backoff), the time it will be; or None when there is
        no such item any more (its work ended, or it was parked)."""
        t, now, parked = self._t, self._clock(), []
        with self._db.transaction() as connection:
            query = select(t).where(t.c.id == item_id, t.c.queue == self.name, t.c.item == item)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()
            row = connection.execute(query).first()
            if row is None:
                return None
            if as_utc(row.available_at) > now:
                return as_utc(row.available_at)
            claimed = self._lease_or_park(connection, row, now, parked)
        self._alert_once_committed(parked)
        return claimed

    def _lease_or_park(self, connection: Connection, row, now: dt.datetime, parked: list) -> Claimed | None:
        """Lease the available `row` for one more attempt, or park it when its attempts are spent."""
        if row.attempts - row.forgiven < self.policy.max_attempts:
            connection.execute(self._lease_it, {"item_id": row.id, "until": now + self._lease,
                                                "new_attempts": row.attempts + 1})
            return Claimed(row.id, row.item, row.attempts + 1, row.traceparent, row.tracestate, row.priority)
        error = (f"attempt {row.attempts} ended without an outcome: its lease ran out (its worker "
                 f"stopped, or lost the database) (last error: {row.last_error or 'none'})")
        parked.append(self._park(connection, row, row.attempts, MAX_ATTEMPTS, error, now))
        return None

    def undispatched(self, limit: int = 100) -> list[Undispatched]:
        """Items no broker message carries yet (new, or replayed), oldest first."""
        t = self._t
        query = (select(t.c.id, t.c.item, t.c.priority, t.c.available_at)
                 .where(t.c.queue == self.name, t.c.dispatched == false()).order_by(t.c.id).limit(limit))
        with self._db.reading() as connection:
            return [Undispatched(r.id, r.item, r.priority, as_utc(r.available_at)) for r in connection.execute(query)]

    def redispatch_overdue(self, overdue: dt.timedelta) -> int:
        """Items a message should have brought long ago (available for longer than `overdue`,
        unclaimed): their message was lost (a queue purged, a broker's disk gone). They become
        undispatched again, so the dispatcher sends them anew; how many."""
        t, now = self._t, self._clock()
        with self._db.transaction() as connection:
            return connection.execute(update(t).where(
                t.c.queue == self.name, t.c.dispatched == true(), t.c.available_at < now - overdue,
            ).values(dispatched=false(), available_at=now)).rowcount

    def mark_dispatched(self, items: list[Undispatched]) -> None:
        """Once the broker confirmed their messages (an item that has ended meanwhile is left out,
        and so is a new item that has its id now)."""
        if not items:
            return
        with self._db.transaction() as connection:
            connection.execute(self._dispatched, [{"item_id": i.id, "item_name": i.item} for i in items])

    @property
    def lease_seconds(self) -> float:
        return self._lease.total_seconds()

    def renew(self, claimed: Claimed) -> bool:
        """Extend the lease of an item still held (a long step in progress); False when it was lost
        (it expired and another worker claimed it)."""
        with self._db.transaction() as connection:
            renewed = connection.execute(self._renew, {"item_id": claimed.id, "item_name": claimed.item,
                                                       "held": claimed.attempts, "until": self._clock() + self._lease})
            return renewed.rowcount == 1

    def done(self, connection: Connection, claimed: Claimed) -> None:
        self._done.run(connection, {"item_id": claimed.id, "item": claimed.item})

    def backoff(self, attempts: int) -> dt.timedelta:
        """The delay after a failed attempt: exponential, capped, with "equal jitter" (half of it
        fixed, half random), so retries of many items do not come back in step."""
        p = self.policy
        seconds = min(p.max_backoff_seconds, p.initial_backoff_seconds * 2 ** min(attempts - 1, 30))
        return dt.timedelta(seconds=seconds * (0.5 + self._rng.random() / 2))

    def retry(self, claimed: Claimed, error: str) -> Retried:
        """Put the item back for later, or park it once the policy is spent (its attempts, or its
        age since it was queued). A worker whose lease was lost (another worker holds the item
        now) changes nothing: it neither reschedules nor parks someone else's attempt."""
        t, now = self._t, self._clock()
        with self._db.transaction() as connection:
            query = select(t).where(t.c.id == claimed.id, t.c.item == claimed.item, t.c.attempts == claimed.attempts)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()
            row = connection.execute(query).first()
            if row is None:
                return Retried()
            reason = (MAX_ATTEMPTS if claimed.attempts - row.forgiven >= self.policy.max_attempts
                      else MAX_AGE if (now - as_utc(row.created_at)).total_seconds() >= self.policy.max_age_seconds
                      else None)
            if reason is None:
                delay = self.backoff(claimed.attempts)
                rescheduled = connection.execute(update(t).where(t.c.id == row.id, t.c.attempts == claimed.attempts)
                                                 .values(available_at=now + delay, last_error=error[:2000]))
                return Retried(delay=delay) if rescheduled.rowcount == 1 else Retried()
            parked = self._park(connection, row, claimed.attempts, reason, error, now)
        self._alert_once_committed([parked])
        return Retried(parked=parked)

    def defer(self, claimed: Claimed, delay: dt.timedelta, note: str) -> Retried:
        """Put a claimed item back until `delay` has passed: its work waits for something outside
        it (a review, which may take days), an outcome and no failure. The retry policy starts
        again: the attempts made so far are forgiven and its age counts from when it is due
        (its `created_at` becomes that time). `note` is kept as its last word. Retried(delay), or
        Retried() when the lease was lost meanwhile (another worker holds the item)."""
        t, now = self._t, self._clock()
        with self._db.transaction() as connection:
            deferred = connection.execute(update(t).where(
                t.c.id == claimed.id, t.c.item == claimed.item, t.c.attempts == claimed.attempts,
            ).values(available_at=now + delay, forgiven=claimed.attempts, created_at=now + delay,
                     last_error=note[:2000], deferred=true()))
        return Retried(delay=delay) if deferred.rowcount == 1 else Retried()

    def _park(self, connection: Connection, row, attempts: int, reason: str, error: str,
              now: dt.datetime) -> ParkedItem:
        """Move the claimed item `row` out of the queue into its audit record, in `connection`."""
        connection.execute(delete(self._t).where(self._t.c.id == row.id))
        record = dict(queue=self.name, item=row.item, priority=row.priority, attempts=attempts, reason=reason,
                      error=error[:2000], queued_at=as_utc(row.created_at), parked_at=now, parked_by=self._worker,
                      replayed_at=None, replayed_by="", traceparent=row.traceparent, tracestate=row.tracestate)
        parked_id = connection.execute(insert(self._parked).values(**record)).inserted_primary_key[0]
        return ParkedItem(id=parked_id, **record)

    def _alert_once_committed(self, parked: list[ParkedItem]) -> None:
        """`_alert` each item, once the transaction that parked them has committed (never if not)."""
        for item in parked:
            self._db.after_commit(functools.partial(self._alert, item))

    def _alert(self, parked: ParkedItem) -> None:
        """Once the park is committed: the error line operators alert on, and the metric."""
        PARKED.labels(self.name, parked.reason).inc()
        log.error("parked %s item %s as a dead letter after %d attempt(s) (%s): %s", self.name, parked.item,
                  parked.attempts, parked.reason, parked.error,
                  extra={"alert": "dead_letter", "queue": self.name, "item": parked.item, "reason": parked.reason,
                         "attempts": parked.attempts, "dead_letter": parked.id})

    def dead_letters(self, include_replayed: bool = False, after_id: int = 0, limit: int = 1000) -> list[ParkedItem]:
        """The queue's parked items in id order (oldest first), after `after_id`."""
        p = self._parked
        query = select(p).where(p.c.queue == self.name, p.c.id > after_id).order_by(p.c.id).limit(limit)
        if not include_replayed:
            query = query.where(p.c.replayed_at.is_(None))
        with self._db.reading() as connection:
            return [_parked(row) for row in connection.execute(query)]

    def parked_in(self, connection: Connection, items: list[str]) -> dict[str, ParkedItem]:
        """The items among `items` that are parked now (waiting for a replay), by item."""
        p = self._parked
        if not items:
            return {}
        query = (select(p).where(p.c.queue == self.name, p.c.item.in_(items), p.c.replayed_at.is_(None))
                 .order_by(p.c.id))
        return {row.item: _parked(row) for row in connection.execute(query)}

    def replay_in(self, connection: Connection, dead_letter_ids: list[int] | None, now: dt.datetime,
                  by: str) -> int:
        """Put parked items back on the queue with a fresh attempt count (all when no ids are
        given), inside the caller's transaction; the audit record stays, marked as replayed by
        `by`. An item already back on the queue is not queued twice. Returns how many."""
        p, t = self._parked, self._t
        query = (select(p.c.id, p.c.item, p.c.priority, p.c.traceparent, p.c.tracestate)
                 .where(p.c.queue == self.name, p.c.replayed_at.is_(None)))
        if dead_letter_ids is not None:
            query = query.where(p.c.id.in_(dead_letter_ids))
        if connection.dialect.name == "postgresql":
            query = query.with_for_update()         # a concurrent replay of the same ones waits, then finds none
        rows = list(connection.execute(query.order_by(p.c.id)))
        if dead_letter_ids is not None and len(rows) != len(set(dead_letter_ids)):
            missing = sorted(set(dead_letter_ids) - {r.id for r in rows})
            raise NotFound(f"no parked work item waiting for replay with id(s) {missing}",
                           reason="DEAD_LETTER_NOT_FOUND")
        for row in rows:
            queued = connection.execute(select(t.c.id).where(t.c.queue == self.name, t.c.item == row.item)).first()
            if queued is None:          # back in the trace of the request that created the work
                self.enqueue(connection, row.item, row.priority,
                             trace_context={"traceparent": row.traceparent, "tracestate": row.tracestate})
            connection.execute(update(p).where(p.c.id == row.id).values(replayed_at=now, replayed_by=by))
        if rows:
            log.warning("replayed %d parked %s item(s)", len(rows), self.name,
                        extra={"queue": self.name, "dead_letters": [r.id for r in rows], "by": by})
        return len(rows)

    def depth(self) -> int:
        with self._db.reading() as connection:
            return connection.execute(select(func.count()).select_from(self._t).where(self._t.c.queue == self.name)).scalar_one()
