"""DeadLetterService: the operator's view of a producer's dead letters, and their replay."""
from __future__ import annotations

from sqlalchemy import Table

from diboas.events.v1 import events_pb2, events_pb2_grpc

from ..db import Database
from ..errors import InvalidArgument
from ..idempotency import run_idempotent
from ..requests import SEQUENCE, PageTokens, fingerprint, page_size, request_id, timestamp
from .relay import DeadLetter, Relay


def dead_letter_pb(d: DeadLetter) -> events_pb2.DeadLetter:
    return events_pb2.DeadLetter(id=d.id, event_id=d.event_id, topic=d.topic, subscriber=d.subscriber,
                                 attempts=d.attempts, reason=d.reason, error=d.error,
                                 create_time=timestamp(d.created_at), replay_time=timestamp(d.replayed_at))


PAGES = PageTokens("deadLetters", SEQUENCE)      # after this dead letter id


class DeadLetterServicer(events_pb2_grpc.DeadLetterServiceServicer):
    def __init__(self, db: Database, relay: Relay, idempotency_keys: Table):
        self._db, self._relay, self._keys = db, relay, idempotency_keys

    async def ListDeadLetters(self, request, context):
        limit = page_size(request.page_size)
        after = PAGES.read(request.page_token)
        found = await self._db.run(self._relay.dead_letters, request.include_replayed, after[0] if after else 0, limit + 1)
        more = len(found) > limit
        return events_pb2.ListDeadLettersResponse(dead_letters=[dead_letter_pb(d) for d in found[:limit]],
                                                  next_page_token=PAGES.write(found[limit - 1].id) if more else "")

    async def ReplayDeadLetters(self, request, context):
        rid = request_id(request)
        if request.all == bool(request.ids):
            raise InvalidArgument.field("ids", "give the ids of the dead letters to replay, or all = true (not both)")
        ids = None if request.all else list(request.ids)
        data = await self._db.run(
            run_idempotent, self._db, self._keys, "ReplayDeadLetters", rid, fingerprint(request),
            lambda connection, now: self._relay.replay_in(connection, ids, now),
            lambda count: events_pb2.ReplayDeadLettersResponse(replayed=count).SerializeToString(),
            self._relay.now)
        return events_pb2.ReplayDeadLettersResponse.FromString(data)
