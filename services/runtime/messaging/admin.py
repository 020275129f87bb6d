"""DeadLetterService: the operator's view of a producer's dead letters, and their replay: event
deliveries the relay gave up on and, where the service has a work queue, the items it parked."""
from __future__ import annotations

from sqlalchemy import Table

from diboas.events.v1 import events_pb2, events_pb2_grpc
from services.domain.errors import InvalidArgument

from ..context import current_caller
from ..db import Database
from ..idempotency import run_idempotent
from ..requests import MAX_SEQUENCE, SEQUENCE, PageTokens, TokenPart, fingerprint, foreign_page_token, page_size, request_id
from ..wire import timestamp
from .queue import ParkedItem, WorkQueue
from .relay import DeadLetter, Relay

EVENTS, ITEMS = events_pb2.DEAD_LETTER_KIND_EVENT_DELIVERY, events_pb2.DEAD_LETTER_KIND_WORK_ITEM
# The list runs through event deliveries, then work items: a page resumes after (kind, id) of
# a list asked for with the same filters (kind, include_replayed); a token of others is refused.
_WANTED = TokenPart(str, lambda text: {str(k): k for k in (0, EVENTS, ITEMS)}.get(text))
_REPLAYED = TokenPart(lambda flag: "1" if flag else "0", {"0": False, "1": True}.get)
_PART = TokenPart(str, lambda text: {str(EVENTS): EVENTS, str(ITEMS): ITEMS}.get(text))
PAGES = PageTokens("deadLetters", _WANTED, _REPLAYED, _PART, SEQUENCE)


def dead_letter_pb(d: DeadLetter) -> events_pb2.DeadLetter:
    return events_pb2.DeadLetter(id=d.id, event_id=d.event_id, topic=d.topic, subscriber=d.subscriber,
                                 attempts=d.attempts, reason=d.reason, error=d.error,
                                 create_time=timestamp(d.created_at), replay_time=timestamp(d.replayed_at),
                                 kind=EVENTS)


def parked_item_pb(p: ParkedItem) -> events_pb2.DeadLetter:
    return events_pb2.DeadLetter(id=p.id, queue=p.queue, item=p.item, attempts=p.attempts, reason=p.reason,
                                 error=p.error, create_time=timestamp(p.parked_at),
                                 replay_time=timestamp(p.replayed_at), kind=ITEMS, parked_by=p.parked_by,
                                 replayed_by=p.replayed_by)


MAX_REPLAY_IDS = 1000


def _ids(ids) -> list[int]:
    """The dead letter ids of a replay: ids this service could have given out, and not too many at once."""
    if len(ids) > MAX_REPLAY_IDS:
        raise InvalidArgument.field("ids", f"at most {MAX_REPLAY_IDS} ids at once, got {len(ids)}; use all = true "
                                           "to replay everything that waits")
    wrong = next((i for i in ids if not 1 <= i <= MAX_SEQUENCE), None)
    if wrong is not None:
        raise InvalidArgument.field("ids", f"{wrong} is not a dead letter id (ids run from 1 to {MAX_SEQUENCE})")
    return list(ids)


class DeadLetterServicer(events_pb2_grpc.DeadLetterServiceServicer):
    def __init__(self, db: Database, relay: Relay, idempotency_keys: Table, queue: WorkQueue | None = None):
        self._db, self._relay, self._keys, self._queue = db, relay, idempotency_keys, queue

    def _kind(self, kind: int) -> int:
        if kind not in events_pb2.DeadLetterKind.values():
            raise InvalidArgument.field("kind", f"is not a dead letter kind (got {kind})")
        return kind

    async def ListDeadLetters(self, request, context):
        limit = page_size(request.page_size)
        wanted = self._kind(request.kind)
        resume = PAGES.read(request.page_token)
        if resume is not None and resume[:2] != (wanted, request.include_replayed):
            raise foreign_page_token()
        kind, after = resume[2:] if resume else (EVENTS, 0)
        filters = (wanted, request.include_replayed)
        letters: list[events_pb2.DeadLetter] = []
        if kind == EVENTS:
            if wanted in (EVENTS, 0):
                found = await self._db.run(self._relay.dead_letters, request.include_replayed, after, limit + 1)
                if len(found) > limit:
                    return events_pb2.ListDeadLettersResponse(
                        dead_letters=[dead_letter_pb(d) for d in found[:limit]],
                        next_page_token=PAGES.write(*filters, EVENTS, found[limit - 1].id))
                letters = [dead_letter_pb(d) for d in found]
            after = 0                                   # the work items' part starts at its beginning
        if self._queue is not None and wanted in (ITEMS, 0):
            room = limit - len(letters)
            found = await self._db.run(self._queue.dead_letters, request.include_replayed, after, room + 1)
            letters += [parked_item_pb(p) for p in found[:room]]
            if len(found) > room:
                last = found[room - 1].id if room else after
                return events_pb2.ListDeadLettersResponse(dead_letters=letters,
                                                          next_page_token=PAGES.write(*filters, ITEMS, last))
        return events_pb2.ListDeadLettersResponse(dead_letters=letters)

    async def ReplayDeadLetters(self, request, context):
        rid = request_id(request)
        if request.all == bool(request.ids):
            raise InvalidArgument.field("ids", "give the ids of the dead letters to replay, or all = true (not both)")
        kind = self._kind(request.kind)
        if kind == ITEMS and self._queue is None:
            raise InvalidArgument.field("kind", "this service has no work queue")
        ids = None if request.all else _ids(request.ids)
        by = current_caller() or ""

        def replay(connection, now) -> int:
            count = 0
            if kind in (EVENTS, 0):
                count += self._relay.replay_in(connection, ids, now)
            if self._queue is not None and (kind == ITEMS or (kind == 0 and ids is None)):
                count += self._queue.replay_in(connection, ids, now, by)
            return count
        data = await self._db.run(
            run_idempotent, self._db, self._keys, "ReplayDeadLetters", rid, fingerprint(request), replay,
            lambda count: events_pb2.ReplayDeadLettersResponse(replayed=count).SerializeToString(),
            self._relay.now)
        return events_pb2.ReplayDeadLettersResponse.FromString(data)
