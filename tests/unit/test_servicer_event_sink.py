"""EventSink on a fake database: an event is opened and handed to its topic's handler once, with
the inbox record written beside it; a redelivered event is a duplicate; an event without a
handler, or one that was tampered with or is stale, is refused without running anything."""
from __future__ import annotations

import datetime as dt

import grpc
import pytest

from diboas.events.v1 import events_pb2
from services.runtime.db import new_metadata
from services.runtime.messaging.secure import KeyRing, seal
from services.runtime.messaging.sink import EventSink
from services.runtime.messaging.store import messaging_tables
from services.runtime.status import from_status_message

from servicing import FakeDatabase, Served

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
RING = KeyRing("k1", {"k1": bytes(range(32))})
PAYLOAD = b"wallets/w1 credited 12.50 USD"
TOPIC = "transaction.completed"


def sealed(sent: dt.datetime = NOW - dt.timedelta(seconds=5), topic: str = TOPIC) -> events_pb2.EventEnvelope:
    envelope = events_pb2.EventEnvelope(id="evt-1", source="spiffe://diboas.local/service/transaction",
                                        spec_version="1.0", type=topic, subject="transactions/t1")
    envelope.time.FromDatetime(sent)
    return seal(envelope, PAYLOAD, RING)


class Handled:
    """A topic's handler that remembers what it was given."""

    def __init__(self):
        self.events: list[tuple] = []

    def __call__(self, connection, envelope, payload, now):
        self.events.append((envelope.id, payload, now))


@pytest.fixture
def handled() -> Handled:
    return Handled()


def sink(db: FakeDatabase, handled: Handled) -> Served:
    servicer = EventSink(db, messaging_tables(new_metadata()), "wallet", RING, {TOPIC: handled},
                         max_age=dt.timedelta(hours=1), clock=lambda: NOW)
    return Served(events_pb2.DESCRIPTOR.services_by_name["EventSinkService"], servicer, caller="relay")


def test_a_new_event_is_opened_handled_once_and_recorded_in_the_inbox(handled):
    db = FakeDatabase()
    reply = sink(db, handled).call("DeliverEvent", events_pb2.DeliverEventRequest(envelope=sealed(), attempt=1))
    assert not reply.duplicate
    assert handled.events == [("evt-1", PAYLOAD, NOW)]
    [record] = db.written
    assert record.table.name == "inbox"
    assert {k: v for k, v in record.compile().params.items() if k != "handled_at"} == {"consumer": "wallet",
                                                                                      "event_id": "evt-1"}


def test_an_event_the_inbox_has_is_a_duplicate_and_is_not_handled_again(handled):
    db = FakeDatabase(found=("evt-1",))
    reply = sink(db, handled).call("DeliverEvent", events_pb2.DeliverEventRequest(envelope=sealed(), attempt=2))
    assert reply.duplicate
    assert handled.events == [] and db.written == []


def test_an_event_without_a_handler_is_refused(handled):
    db = FakeDatabase()
    refused = sink(db, handled).refusal("DeliverEvent", events_pb2.DeliverEventRequest(
        envelope=sealed(topic="wallet.created")))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_HANDLER")
    assert "wallet.created" in refused.message and db.written == []


def tampered() -> events_pb2.EventEnvelope:
    envelope = sealed()
    envelope.subject = "transactions/t2"           # the envelope's identity is sealed with its data
    return envelope


@pytest.mark.parametrize("envelope,reason", [
    (tampered(), "MESSAGE_TAMPERED"),
    (sealed(sent=NOW - dt.timedelta(hours=2)), "MESSAGE_STALE"),
], ids=["tampered", "stale"])
def test_an_event_that_cannot_be_trusted_is_refused_and_not_handled(handled, envelope, reason):
    db = FakeDatabase()
    refused = sink(db, handled).refusal("DeliverEvent", events_pb2.DeliverEventRequest(envelope=envelope))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert handled.events == [] and db.written == []


class Crashing(Handled):
    """A handler with a bug for one event id."""

    def __call__(self, connection, envelope, payload, now):
        if envelope.id == "evt-bug":
            raise KeyError("a bug")
        super().__call__(connection, envelope, payload, now)


def renamed(envelope: events_pb2.EventEnvelope, event_id: str) -> events_pb2.EventEnvelope:
    """The same event under another id, sealed again."""
    fresh = events_pb2.EventEnvelope(id=event_id, source=envelope.source, spec_version="1.0", type=envelope.type,
                                     subject=envelope.subject)
    fresh.time.CopyFrom(envelope.time)
    return seal(fresh, PAYLOAD, RING)


def test_a_batch_answers_one_outcome_per_event_in_order_and_one_failure_spoils_no_other(caplog):
    handled = Crashing()
    db = FakeDatabase()
    deliveries = [renamed(sealed(), "evt-a"), sealed(topic="wallet.created"), tampered(),
                  renamed(sealed(), "evt-bug"), renamed(sealed(), "evt-b")]
    reply = sink(db, handled).call("DeliverEvents", events_pb2.DeliverEventsRequest(deliveries=[
        events_pb2.DeliverEventRequest(envelope=envelope, attempt=1) for envelope in deliveries]))
    codes = [grpc.StatusCode.OK.value[0], grpc.StatusCode.FAILED_PRECONDITION.value[0],
             grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.OK.value[0]]
    assert [outcome.status.code for outcome in reply.outcomes] == codes
    refused = [from_status_message(outcome.status, "wallet") for outcome in reply.outcomes[1:4]]
    assert [(type(e).__name__, e.reason) for e in refused] == [
        ("FailedPrecondition", "NO_HANDLER"), ("InvalidArgument", "MESSAGE_TAMPERED"),
        ("ServiceUnavailable", "UPSTREAM_INTERNAL")]
    assert "a bug" not in reply.outcomes[3].status.message                 # the bug stays in the log
    assert any("evt-bug" in r.getMessage() and r.exc_info for r in caplog.records)
    assert sorted(event_id for event_id, _, _ in handled.events) == ["evt-a", "evt-b"]
    assert sorted(r.compile().params["event_id"] for r in db.written) == ["evt-a", "evt-b"]


def test_a_duplicate_in_a_batch_is_said_so(handled):
    reply = sink(FakeDatabase(found=("evt-1",)), handled).call("DeliverEvents", events_pb2.DeliverEventsRequest(
        deliveries=[events_pb2.DeliverEventRequest(envelope=sealed(), attempt=2)]))
    [outcome] = reply.outcomes
    assert outcome.duplicate and outcome.status.code == 0 and handled.events == []


@pytest.mark.parametrize("count", [0, 101])
def test_a_batch_of_no_events_or_too_many_is_refused_before_anything_is_handled(handled, count):
    db = FakeDatabase()
    refused = sink(db, handled).refusal("DeliverEvents", events_pb2.DeliverEventsRequest(
        deliveries=[events_pb2.DeliverEventRequest(envelope=sealed(), attempt=1)] * count))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and list(refused.fields) == ["deliveries"]
    assert handled.events == [] and db.written == []
