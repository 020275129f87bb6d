"""A unit of work: one database transaction, and what a use case writes in it.

`UnitsOfWork` opens them for one service: `begin()` for a write transaction (committed when
the block ends, rolled back if it raises), `reading()` for reads, `idempotent()` for a
request_id's first answer. Each `UnitOfWork` carries the service's repository bound to its
connection, and the service's outbox, work queue and idempotency records, so that an event, a
queued item or a stored response is written in the transaction of the change it belongs to
and use cases never pass a raw connection around.
"""
from __future__ import annotations

import contextlib
import datetime as dt
from typing import Callable, Generic, Iterator, TypeVar

from sqlalchemy import Connection, Table

from services.domain.clock import utcnow

from .db import Database
from .idempotency import again_on_conflict, respond_once, stored_response
from .messaging.queue import Claimed, ParkedItem, WorkQueue
from .messaging.store import Outbox

R = TypeVar("R")
T = TypeVar("T")


class UnitOfWork(Generic[R]):
    def __init__(self, connection: Connection, repository: R, now: dt.datetime, outbox: Outbox | None,
                 queue: WorkQueue | None):
        self.connection, self.repo, self.now = connection, repository, now
        self._outbox, self._queue = outbox, queue
        self.published = False

    def publish(self, topic: str, subject: str, event) -> str:
        """Record `event` (a protobuf message) in the outbox; the relay delivers it once committed."""
        self.published = True
        return self._outbox.add(self.connection, topic, subject, event)

    def enqueue(self, item: str, priority: int = 0, *, leased: bool = False) -> Claimed | None:
        """Queue `item` for the service's workers, once committed; `leased`: already claimed by
        the caller for its first attempt (WorkQueue.enqueue), and that claim."""
        return self._queue.enqueue(self.connection, item, priority, leased=leased)

    def done(self, claimed: Claimed) -> None:
        """Remove a claimed item from the queue, with the outcome this transaction records."""
        self._queue.done(self.connection, claimed)

    def parked_in(self, items: list[str]) -> dict[str, ParkedItem]:
        """The items among `items` whose work is parked now (waiting for a replay), by item."""
        return self._queue.parked_in(self.connection, items) if self._queue else {}


class UnitsOfWork(Generic[R]):
    """Opens the units of work of one service's database."""

    def __init__(self, db: Database, repository: Callable[[Connection], R], *, outbox: Outbox | None = None,
                 queue: WorkQueue | None = None, idempotency: Table | None = None,
                 clock: Callable[[], dt.datetime] = utcnow):
        self.db = db
        self._repository, self._outbox, self._queue, self._idempotency = repository, outbox, queue, idempotency
        self._clock = clock

    def _unit(self, connection: Connection) -> UnitOfWork[R]:
        return UnitOfWork(connection, self._repository(connection), self._clock(), self._outbox, self._queue)

    @contextlib.contextmanager
    def begin(self) -> Iterator[UnitOfWork[R]]:
        """A write transaction: committed when the block ends, rolled back if it raises. Once a
        unit that published an event has committed, the outbox says so (the relay wakes up)."""
        with self.db.transaction() as connection:
            unit = self._unit(connection)
            yield unit
        if unit.published:
            self.db.after_commit(self._outbox.committed)

    @contextlib.contextmanager
    def reading(self) -> Iterator[UnitOfWork[R]]:
        """Reads only (a consistent snapshot; on SQLite it never waits for writers)."""
        with self.db.reading() as connection:
            yield self._unit(connection)

    def stored(self, operation: str, request_id: str, fingerprint: str) -> bytes | None:
        """The first response of `request_id`, if there was one (ALREADY_EXISTS for another request)."""
        return self.stored_or_read(operation, request_id, fingerprint, lambda unit: None)[0]

    def stored_or_read(self, operation: str, request_id: str, fingerprint: str,
                       read: Callable[[UnitOfWork[R]], T]) -> tuple[bytes | None, T | None]:
        """In one snapshot: the first response of `request_id` (as `stored`), and when there was
        none, what `read` reads (one database round trip where a use case needs both)."""
        with self.reading() as unit:
            first = stored_response(unit.connection, self._idempotency, operation, request_id, fingerprint)
            return first, (read(unit) if first is None else None)

    def idempotent(self, operation: str, request_id: str, fingerprint: str, work: Callable[[UnitOfWork[R]], T],
                   encode: Callable[[T], bytes]) -> bytes:
        """Run `work` in one unit of work unless `request_id` was seen; the (stored) response bytes."""
        def attempt() -> bytes:
            with self.begin() as unit:
                return respond_once(unit.connection, self._idempotency, operation, request_id, fingerprint, unit.now,
                                    lambda: encode(work(unit)))
        return again_on_conflict(attempt)

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Blocking database work off the event loop (see Database.run)."""
        return await self.db.run(fn, *args)
