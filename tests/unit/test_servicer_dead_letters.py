"""DeadLetterServicer on a fake relay, a fake work queue and a fake database: dead event
deliveries and parked work items in one list, paged across both; a replay of some ids or of all,
on the right side, by the calling operator; each bad field named."""
from __future__ import annotations

import datetime as dt

import pytest

from diboas.events.v1 import events_pb2
from services.runtime.db import new_metadata
from services.runtime.idempotency import idempotency_table
from services.runtime.messaging.admin import EVENTS, ITEMS, PAGES, DeadLetterServicer
from services.runtime.messaging.queue import ParkedItem
from services.runtime.messaging.relay import DeadLetter

from servicing import FakeDatabase, Recorder, Served

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
E = events_pb2


def dead_letter(i: int) -> DeadLetter:
    return DeadLetter(i, 100 + i, f"evt-{i}", "transaction.completed", "wallet", 5, "MAX_ATTEMPTS", "refused", NOW, None)


def parked(i: int) -> ParkedItem:
    return ParkedItem(i, "transactions", f"t{i}", 5, 8, "MAX_AGE", "chain unavailable", NOW, NOW, "transaction",
                      NOW, "ops@diboas")


class FakeRelay(Recorder):
    """The Relay methods the servicer calls: dead letters 1..`count` in id order, and their replay."""

    def __init__(self, count: int):
        super().__init__()
        self.letters = [dead_letter(i) for i in range(1, count + 1)]

    def dead_letters(self, include_replayed=False, after_id=0, limit=1000):
        self.record("dead_letters", include_replayed=include_replayed, after_id=after_id, limit=limit)
        return [d for d in self.letters if d.id > after_id][:limit]

    def replay_in(self, connection, dead_letter_ids, now):
        self.record("replay_in", ids=dead_letter_ids, now=now)
        return len(dead_letter_ids) if dead_letter_ids else len(self.letters)

    def now(self):
        return NOW


class FakeQueue(FakeRelay):
    """The WorkQueue methods the servicer calls: parked items 1..`count`, and their replay by someone."""

    def __init__(self, count: int):
        Recorder.__init__(self)
        self.letters = [parked(i) for i in range(1, count + 1)]

    def replay_in(self, connection, dead_letter_ids, now, by):
        self.record("replay_in", ids=dead_letter_ids, now=now, by=by)
        return len(dead_letter_ids) if dead_letter_ids else len(self.letters)


def served(relay: FakeRelay, queue: FakeQueue | None = None, db: FakeDatabase | None = None) -> Served:
    servicer = DeadLetterServicer(db or FakeDatabase(), relay, idempotency_table(new_metadata()), queue)
    return Served(E.DESCRIPTOR.services_by_name["DeadLetterService"], servicer, caller="operator")


def test_deliveries_and_parked_items_are_listed_together_and_paged_across_both():
    relay, queue = FakeRelay(3), FakeQueue(2)
    dead = served(relay, queue)
    pages, token = [], ""
    for _ in range(3):
        page = dead.call("ListDeadLetters", E.ListDeadLettersRequest(page_size=2, page_token=token))
        pages.append([(d.kind, d.id) for d in page.dead_letters])
        token = page.next_page_token
    assert pages == [[(EVENTS, 1), (EVENTS, 2)], [(EVENTS, 3), (ITEMS, 1)], [(ITEMS, 2)]] and token == ""
    assert [args["after_id"] for _, args in relay.calls] == [0, 2]
    assert [args["after_id"] for _, args in queue.calls] == [0, 1]         # the items from their beginning
    event, item = dead.call("ListDeadLetters", E.ListDeadLettersRequest(
        page_token=PAGES.write(0, False, EVENTS, 2))).dead_letters[:2]
    assert (event.event_id, event.topic, event.subscriber, event.reason) == (
        "evt-3", "transaction.completed", "wallet", "MAX_ATTEMPTS")
    assert not event.HasField("replay_time")
    assert (item.queue, item.item, item.parked_by, item.replayed_by) == ("transactions", "t1", "transaction",
                                                                         "ops@diboas")


def test_a_full_page_of_deliveries_ends_with_a_token_after_the_last_one():
    relay = FakeRelay(5)
    page = served(relay, FakeQueue(1)).call("ListDeadLetters", E.ListDeadLettersRequest(
        page_size=2, kind=E.DEAD_LETTER_KIND_EVENT_DELIVERY, include_replayed=True))
    assert [d.id for d in page.dead_letters] == [1, 2]
    assert page.next_page_token == PAGES.write(EVENTS, True, EVENTS, 2)
    assert relay.last("dead_letters") == {"include_replayed": True, "after_id": 0, "limit": 3}


def test_a_replay_of_ids_goes_to_the_kind_asked_for_by_the_calling_operator():
    relay, queue, db = FakeRelay(3), FakeQueue(3), FakeDatabase()
    dead = served(relay, queue, db)
    events = dead.call("ReplayDeadLetters", E.ReplayDeadLettersRequest(request_id="r-1", ids=[1, 3]))
    assert events.replayed == 2
    assert relay.last("replay_in") == {"ids": [1, 3], "now": NOW} and queue.calls == []
    items = dead.call("ReplayDeadLetters", E.ReplayDeadLettersRequest(request_id="r-2", ids=[2],
                                                                      kind=E.DEAD_LETTER_KIND_WORK_ITEM))
    assert items.replayed == 1 and queue.last("replay_in") == {"ids": [2], "now": NOW, "by": "operator"}
    assert [statement.table.name for statement in db.written] == ["idempotency_keys"] * 2   # each answer kept


def test_a_replay_of_all_replays_both_kinds():
    relay, queue = FakeRelay(3), FakeQueue(2)
    reply = served(relay, queue).call("ReplayDeadLetters", E.ReplayDeadLettersRequest(request_id="r-1", all=True))
    assert reply.replayed == 5
    assert relay.last("replay_in")["ids"] is None and queue.last("replay_in")["ids"] is None


def test_each_bad_field_is_named():
    def replay(**fields) -> tuple[str, E.ReplayDeadLettersRequest]:
        return "ReplayDeadLetters", E.ReplayDeadLettersRequest(**{"request_id": "r", **fields})
    assert served(FakeRelay(1), FakeQueue(1)).misnamed({
        "a negative page size": ("ListDeadLetters", E.ListDeadLettersRequest(page_size=-1), "page_size"),
        "an unknown kind": ("ListDeadLetters", E.ListDeadLettersRequest(kind=9), "kind"),
        "a token of other filters": ("ListDeadLetters", E.ListDeadLettersRequest(
            page_token=PAGES.write(0, True, EVENTS, 1)), "page_token"),
        "no request id": (*replay(request_id="", all=True), "request_id"),
        "neither ids nor all": (*replay(), "ids"),
        "both ids and all": (*replay(ids=[1], all=True), "ids"),
        "an id that no dead letter has": (*replay(ids=[1, 0]), "ids"),
        "too many ids": (*replay(ids=range(1, 1002)), "ids"),
    }) == {}
    assert served(FakeRelay(1)).misnamed({
        "work items without a queue": (*replay(all=True, kind=E.DEAD_LETTER_KIND_WORK_ITEM), "kind"),
    }) == {}


@pytest.mark.parametrize("kind", [E.DEAD_LETTER_KIND_UNSPECIFIED, E.DEAD_LETTER_KIND_EVENT_DELIVERY])
def test_a_list_without_a_queue_has_deliveries_only(kind):
    page = served(FakeRelay(2)).call("ListDeadLetters", E.ListDeadLettersRequest(kind=kind))
    assert [(d.kind, d.id) for d in page.dead_letters] == [(EVENTS, 1), (EVENTS, 2)]
