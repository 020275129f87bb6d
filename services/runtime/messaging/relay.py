"""The relay: delivers what producers put in their outbox to every subscriber, reliably.

  * each subscriber on its own (a slow one holds up no other), its events in windows started
    in outbox order, a few windows on their way at once; no order is promised between events
    (a failed one is retried after later ones succeeded): each is about its own subject, and
    the inbox makes a redelivery harmless;
  * a subscriber that cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED, its circuit breaker
    open) is retried with exponential backoff and jitter for as long as it takes: nothing is
    lost and nothing is dead-lettered for that;
  * a handler that fails is retried up to the policy's attempts (3 by default), then the
    delivery is dead-lettered: an audit record, an error log line and a metric (the alert);
  * a message the subscriber rejects as tampered or stale is dead-lettered at once;
  * dead letters can be listed and replayed (`replay`), one or all.

Deliveries go through an EventTransport, a window of one subscriber's events at a time: the
embedded one calls the subscriber's EventSinkService.DeliverEvents over the mesh (mTLS, its own
policy; one call, one outcome per event); a broker-backed one can replace it. Each window is
sent in a span "send <subscriber>" linked to every event's creation; the subscriber's span
of each event continues the event's own trace (the transaction it is about).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from dataclasses import dataclass
from typing import Callable, Protocol

from prometheus_client import Counter
from sqlalchemy import Connection, insert, select, update

from diboas.events.v1 import events_pb2, events_pb2_grpc
from services.domain import errors
from services.domain.clock import utcnow

from ..client import Upstream
from ..db import Database, param
from ..loops import repeat
from ..prepared import Prepared
from ..status import from_status_message
from ..tracing import MessageTracing
from .sink import MAX_DELIVERIES
from .store import DEAD, DELIVERED, PENDING, MessagingTables

log = logging.getLogger("diboas.relay")
DEAD_LETTERS = Counter("diboas_dead_letters", "Deliveries given up on and dead-lettered",
                       ["service", "subscriber", "topic", "reason"])
DELIVERIES = Counter("diboas_event_deliveries", "Event delivery tries, by outcome",
                     ["service", "subscriber", "outcome"])


# (envelope, attempt): one event to deliver, and which try this is (1 for the first)
Delivery = tuple[events_pb2.EventEnvelope, int]


class EventTransport(Protocol):
    async def deliver_all(self, subscriber: str, deliveries: list[Delivery]) -> list[Exception | None]:
        """Hand the events to the subscriber; return once each has been handled: None for each
        one that was, the error for each one that was not, in the order given. Raise when none
        of them could be handed over (the subscriber down, say)."""


def _results(results: list) -> list:
    """asyncio.gather(..., return_exceptions=True) of tasks that must all end before the caller
    goes on: their results, or the first error raised after every other one is logged."""
    failures = [result for result in results if isinstance(result, BaseException)]
    for extra in failures[1:]:
        log.error("event delivery round failed", exc_info=extra)
    if failures:
        raise failures[0]
    return results


def outcomes_of(results: list) -> list[Exception | None]:
    """asyncio.gather(..., return_exceptions=True) of one call per event, as `deliver_all`
    answers: None for each that succeeded, its error for each that failed. A cancellation is
    not an outcome of one event: it is raised."""
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
    return [result if isinstance(result, Exception) else None for result in results]


class MeshTransport:
    """Embedded transport: the subscriber's EventSinkService.DeliverEvents, over the mesh: one
    call for all the events given, one outcome each."""

    def __init__(self, upstreams: dict[str, Upstream]):
        self._stubs = {name: up.stub(events_pb2_grpc.EventSinkServiceStub) for name, up in upstreams.items()}

    async def deliver_all(self, subscriber: str, deliveries: list[Delivery]) -> list[Exception | None]:
        stub = self._stubs.get(subscriber)
        if stub is None:
            raise errors.FailedPrecondition(f"no channel to subscriber '{subscriber}'", reason="UNKNOWN_SUBSCRIBER")
        requests = [events_pb2.DeliverEventRequest(envelope=envelope, attempt=attempt, subscription=subscriber)
                    for envelope, attempt in deliveries]
        try:
            reply = await stub.DeliverEvents(events_pb2.DeliverEventsRequest(deliveries=requests))
        except errors.Unimplemented:
            # A subscriber of an older release (a rolling upgrade): one DeliverEvent per event.
            return outcomes_of(await asyncio.gather(*(stub.DeliverEvent(request) for request in requests),
                                                    return_exceptions=True))
        if len(reply.outcomes) != len(deliveries):
            raise errors.ServiceUnavailable(f"{subscriber} answered {len(reply.outcomes)} outcomes for "
                                            f"{len(deliveries)} events", reason="UPSTREAM_BAD_ANSWER")
        return [None if outcome.status.code == 0 else from_status_message(outcome.status, subscriber)
                for outcome in reply.outcomes]


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 3             # handler failures before a delivery is dead-lettered
    initial_backoff: float = 0.2      # seconds, doubled per failed try, with jitter
    max_backoff: float = 30.0
    batch: int = 500                  # deliveries fetched per round
    # Deliveries per call to one subscriber: as many as one DeliverEvents call takes (a small
    # window capped the rate, docs/decisions.md, 46).
    window: int = MAX_DELIVERIES
    in_flight: int = 4                # windows on their way at once per subscriber


@dataclass(frozen=True)
class DeadLetter:
    id: int
    delivery_id: int
    event_id: str
    topic: str
    subscriber: str
    attempts: int
    reason: str
    error: str
    created_at: dt.datetime
    replayed_at: dt.datetime | None


def _down(exc: BaseException) -> bool:
    """The subscriber could not be reached or cannot work now (as opposed to: it handled the
    event and failed). An upstream INTERNAL or UNKNOWN arrives as ServiceUnavailable with reason
    UPSTREAM_<CODE>: that is a handler failure."""
    if isinstance(exc, errors.DeadlineExceeded):
        return True
    return isinstance(exc, errors.ServiceUnavailable) and not exc.reason.startswith("UPSTREAM_")


def _rejected(exc: BaseException) -> bool:
    return isinstance(exc, errors.InvalidArgument) and str(getattr(exc, "reason", "")).startswith("MESSAGE_")


class Relay:
    def __init__(self, db: Database, tables: MessagingTables, transport: EventTransport, service: str,
                 policy: DeliveryPolicy = DeliveryPolicy(),
                 clock: Callable[[], dt.datetime] = utcnow,
                 rng: random.Random | None = None, tracing: MessageTracing | None = None):
        self._db, self._t, self._transport, self._service = db, tables, transport, service
        self._policy, self._clock, self._rng = policy, clock, rng or random.Random()
        self._tracing = tracing or MessageTracing()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        d, o = tables.deliveries, tables.outbox
        # Every round runs these two: prepared (services/runtime/prepared.py).
        self._due_rows = Prepared(
            select(d.c.id, d.c.subscriber, d.c.attempts, d.c.retries, o.c.topic, o.c.event_id, o.c.envelope)
            .join(o, o.c.id == d.c.outbox_id)
            .where(d.c.state == PENDING, d.c.next_attempt_at <= param(d.c.next_attempt_at, "now"))
            .order_by(d.c.id).limit(policy.batch))
        # Both records change a delivery still PENDING only: whatever became of it meanwhile
        # (delivered, dead-lettered) stays.
        self._delivered = Prepared(update(d).where(d.c.id == param(d.c.id, "delivery_id"), d.c.state == PENDING)
                                   .values(state=DELIVERED, last_error="", updated_at=param(d.c.updated_at, "now")))

    def wake(self) -> None:
        """Something was added to the outbox: deliver it now rather than after the idle pause.
        Safe from any thread (the outbox calls it from the database's)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def now(self) -> dt.datetime:
        return self._clock()

    # --- one round ------------------------------------------------------------------------------

    def _due(self) -> list:
        with self._db.reading() as connection:
            return self._due_rows.run(connection, {"now": self._clock()}).all()

    async def run_once(self) -> int:
        """Deliver what is due now; returns how many deliveries succeeded."""
        rows = await self._db.run(self._due)
        by_subscriber: dict[str, list] = {}
        for row in rows:
            by_subscriber.setdefault(row.subscriber, []).append(row)
        # Every subscriber's deliveries end before the round does: a later round reads what is due
        # again, and must not find a row a delivery of this one is still recording.
        return sum(_results(await asyncio.gather(*(self._deliver_to(queue) for queue in by_subscriber.values()),
                                                 return_exceptions=True)))

    async def _deliver_to(self, queue: list) -> int:
        """One subscriber's due deliveries, in windows of `window`, started in outbox order, up to
        `in_flight` of them on their way at once. Each event is about its own subject, and the
        inbox makes redelivery harmless, so windows need no stricter order. A subscriber found
        down ends the round for it: the windows not yet sent wait their turn."""
        size = self._policy.window
        turn = asyncio.Semaphore(self._policy.in_flight)
        down = False

        async def window(chunk: list) -> int:
            nonlocal down
            async with turn:
                if down:
                    return 0
                outcomes = await self._try(chunk)
                if any(exc is not None and _down(exc) for exc in outcomes):
                    down = True             # before the records below: no window starts meanwhile
                succeeded = [row.id for row, exc in zip(chunk, outcomes, strict=True) if exc is None]
                if succeeded:
                    await self._db.run(self._record_success, succeeded)
                    DELIVERIES.labels(self._service, chunk[0].subscriber, "delivered").inc(len(succeeded))
                for row, exc in zip(chunk, outcomes, strict=True):
                    if exc is not None:
                        await self._db.run(self._record_failure, row, exc)
                return len(succeeded)
        # Every window ends before the round does (the next round reads what is due again).
        return sum(_results(await asyncio.gather(*(window(queue[i:i + size]) for i in range(0, len(queue), size)),
                                                 return_exceptions=True)))

    async def _try(self, chunk: list) -> list[Exception | None]:
        """Deliver one subscriber's window in one go; what became of each row, in order. The
        call runs in a span that links to every event's creation (services/runtime/tracing.py:
        MessageTracing.sending)."""
        outcomes: list[Exception | None] = [None] * len(chunk)
        sent: list[tuple[int, events_pb2.EventEnvelope]] = []
        for i, row in enumerate(chunk):
            try:
                sent.append((i, events_pb2.EventEnvelope.FromString(row.envelope)))
            except Exception as exc:  # noqa: BLE001 - a row that does not parse fails like a handler
                outcomes[i] = exc
        if not sent:
            return outcomes
        subscriber = chunk[0].subscriber
        try:
            with self._tracing.sending(subscriber, [envelope for _, envelope in sent]):
                results = await self._transport.deliver_all(
                    subscriber, [(envelope, chunk[i].attempts + 1) for i, envelope in sent])
        except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
            results = [exc] * len(sent)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise                       # the relay is stopping
            # The call was cancelled under us (its channel closing, say), not the relay: a
            # failure to reach the subscriber like any other, so the relay goes on.
            results = [errors.ServiceUnavailable(f"the delivery to {subscriber} was cancelled",
                                                 reason="DELIVERY_CANCELLED")] * len(sent)
        for (i, _), result in zip(sent, results, strict=True):
            outcomes[i] = result
        return outcomes

    def _record_success(self, delivery_ids: list[int]) -> None:
        now = self._clock()
        with self._db.transaction() as connection:
            self._delivered.run(connection, [{"delivery_id": delivery_id, "now": now} for delivery_id in delivery_ids])

    def _backoff(self, retries: int) -> dt.timedelta:
        seconds = min(self._policy.max_backoff, self._policy.initial_backoff * 2 ** min(retries, 30))
        return dt.timedelta(seconds=seconds * (0.5 + self._rng.random() / 2))  # "equal jitter"

    def _record_failure(self, row, exc: BaseException) -> None:
        now, message = self._clock(), getattr(exc, "message", None) or repr(exc)
        attempts = row.attempts if _down(exc) else row.attempts + 1
        dead_reason = None
        if _rejected(exc):
            dead_reason = exc.reason
        elif not _down(exc) and attempts >= self._policy.max_attempts:
            dead_reason = "HANDLER_FAILED"
        outcome = "subscriber_down" if _down(exc) else ("dead_lettered" if dead_reason else "handler_failed")
        deliveries = self._t.deliveries
        with self._db.transaction() as connection:
            changed = connection.execute(update(deliveries).where(deliveries.c.id == row.id,
                                                                  deliveries.c.state == PENDING).values(
                state=DEAD if dead_reason else PENDING, attempts=attempts, retries=row.retries + 1,
                next_attempt_at=now + self._backoff(row.retries), last_error=message[:2000], updated_at=now)).rowcount
            if not changed:
                return
            if dead_reason:
                self._dead_letter(connection, row, attempts, dead_reason, message, now)
        DELIVERIES.labels(self._service, row.subscriber, outcome).inc()
        if not dead_reason:
            log.log(logging.INFO if _down(exc) else logging.WARNING,
                    "delivery of %s %s to %s failed (%s): %s", row.topic, row.event_id, row.subscriber,
                    outcome, message, extra={"event_id": row.event_id, "subscriber": row.subscriber})

    def _dead_letter(self, connection: Connection, row, attempts: int, reason: str, message: str,
                     now: dt.datetime) -> None:
        connection.execute(insert(self._t.dead_letters).values(
            delivery_id=row.id, event_id=row.event_id, topic=row.topic, subscriber=row.subscriber,
            attempts=attempts, reason=reason, error=message[:2000], created_at=now))
        DEAD_LETTERS.labels(self._service, row.subscriber, row.topic, reason).inc()
        log.error("dead-lettered %s %s for %s after %d attempt(s) (%s): %s", row.topic, row.event_id,
                  row.subscriber, attempts, reason, message,
                  extra={"alert": "dead_letter", "event_id": row.event_id, "subscriber": row.subscriber,
                         "topic": row.topic, "reason": reason})

    # --- the loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, idle_seconds: float = 0.1) -> None:
        """Deliver until `stop` is set; between rounds that found nothing, wait `idle_seconds` or
        until `wake()`."""
        self._loop = asyncio.get_running_loop()
        await repeat(stop, idle_seconds, self.run_once, failure="relay round failed", wait_only_when_idle=True,
                     logger=log, wake=self._wake)

    # --- dead letters ---------------------------------------------------------------------------

    def dead_letters(self, include_replayed: bool = False, after_id: int = 0, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters in id order (oldest first), after `after_id`."""
        dl = self._t.dead_letters
        query = select(dl).where(dl.c.id > after_id).order_by(dl.c.id).limit(limit)
        if not include_replayed:
            query = query.where(dl.c.replayed_at.is_(None))
        with self._db.reading() as connection:
            return [DeadLetter(*row) for row in connection.execute(query)]

    def replay(self, dead_letter_ids: list[int] | None = None) -> int:
        """Send dead letters again (all when no ids are given); see replay_in."""
        with self._db.transaction() as connection:
            return self.replay_in(connection, dead_letter_ids, self._clock())

    def replay_in(self, connection: Connection, dead_letter_ids: list[int] | None, now: dt.datetime) -> int:
        """Put dead letters back for delivery with a fresh attempt count, inside the caller's
        transaction; the audit record stays, marked as replayed. Returns how many."""
        dl, d = self._t.dead_letters, self._t.deliveries
        query = select(dl.c.id, dl.c.delivery_id).where(dl.c.replayed_at.is_(None))
        if dead_letter_ids is not None:
            query = query.where(dl.c.id.in_(dead_letter_ids))
        rows = list(connection.execute(query))
        if dead_letter_ids is not None and len(rows) != len(set(dead_letter_ids)):
            missing = sorted(set(dead_letter_ids) - {r.id for r in rows})
            raise errors.NotFound(f"no dead letter waiting for replay with id(s) {missing}", reason="DEAD_LETTER_NOT_FOUND")
        for row in rows:
            connection.execute(update(d).where(d.c.id == row.delivery_id).values(
                state=PENDING, attempts=0, retries=0, next_attempt_at=now, updated_at=now))
            connection.execute(update(dl).where(dl.c.id == row.id).values(replayed_at=now))
        if rows:
            log.warning("replayed %d dead letter(s)", len(rows), extra={"dead_letters": [r.id for r in rows]})
        return len(rows)
