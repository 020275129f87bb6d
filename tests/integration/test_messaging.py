"""Reliable events over the mesh: outbox -> relay -> the subscriber's event sink (real mTLS
servers), inbox deduplication, retries while the subscriber is down, dead letters and replay."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update

from diboas.common.v1 import common_pb2
from diboas.events.v1 import events_pb2, events_pb2_grpc
from diboas.wallet.v1 import wallet_pb2_grpc
from services.domain.errors import ServiceUnavailable, Unimplemented
from services.runtime.auth import TokenIssuer
from services.runtime.client import Upstream
from services.runtime.config import Address, BreakerPolicy
from services.runtime.db import Database
from services.runtime.messaging.relay import DeliveryPolicy, MeshTransport, Relay
from services.runtime.messaging.secure import KeyRing
from services.runtime.messaging.sink import EventSink
from services.runtime.messaging.store import DEAD, DELIVERED, PENDING, Outbox, messaging_tables
from services.runtime.server import Registration
from services.runtime.tls import load_identity
from services.runtime.unimplemented import unimplemented_registration
from services.runtime.unit_of_work import UnitsOfWork

from conftest import free_port, with_service

TOPIC = "transaction.completed"


def _schema():
    metadata = MetaData()
    tables = messaging_tables(metadata)
    effects = Table("effects", metadata, Column("id", Integer, primary_key=True),
                    Column("event_id", String(64), nullable=False), Column("amount", String(32), nullable=False))
    return metadata, tables, effects


class Subscriber:
    """The wallet side: an event sink whose handler writes one row per event, and can be made to fail."""

    def __init__(self, topology, tmp_path):
        self.metadata, self.tables, self.effects = _schema()
        self.db = Database(f"sqlite:///{tmp_path}/subscriber.db", migrations=None)
        self.metadata.create_all(self.db.engine)   # test schema; services use migrations
        self.failing = False
        self.failing_amounts: set[str] = set()     # fail only the events of these amounts
        self.sink = EventSink(self.db, self.tables, "wallet", KeyRing.load(topology.certs_dir), {TOPIC: self._handle})
        self.served = self.sink

    def _handle(self, connection, envelope, payload, now):
        event = events_pb2.TransactionCompleted.FromString(payload)
        if self.failing or event.amount.amount in self.failing_amounts:
            raise RuntimeError("the handler has a bug")
        connection.execute(insert(self.effects).values(event_id=envelope.id, amount=event.amount.amount))

    def build(self, runtime):
        return [Registration(events_pb2_grpc.add_EventSinkServiceServicer_to_server, self.served),
                unimplemented_registration(wallet_pb2_grpc, "WalletService", "wallet", "not in these tests")]

    def handled(self) -> int:
        with self.db.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(self.effects)).scalar_one()


@pytest.fixture
async def mesh(topology, tmp_path, start_server):
    topology = dataclasses.replace(topology, defaults=dataclasses.replace(
        topology.defaults, breaker=BreakerPolicy(fail_max=3, reset_timeout_seconds=0.2)))
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", free_port()))
    subscriber = Subscriber(topology, tmp_path)
    metadata, tables, _ = _schema()
    db = Database(f"sqlite:///{tmp_path}/publisher.db", migrations=None)
    metadata.create_all(db.engine)
    files = load_identity(topology.certs_dir, "transaction")
    upstream = Upstream(topology, "transaction", topology.services["wallet"], files,
                        TokenIssuer(topology.services["transaction"].identity, files.key), tracing=False)
    relay = Relay(db, tables, MeshTransport({"wallet": upstream}), "transaction",
                  DeliveryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))
    outbox = Outbox(tables, topology.services["transaction"].identity, lambda topic: ["wallet"],
                    KeyRing.load(topology.certs_dir))

    class Mesh:
        pass
    m = Mesh()
    m.topology, m.subscriber, m.db, m.tables, m.relay, m.outbox = topology, subscriber, db, tables, relay, outbox
    m.start_subscriber = lambda: start_server(topology, "wallet", subscriber.build)
    yield m
    await upstream.channel.close()
    db.close()
    subscriber.db.close()


def publish(mesh, n: int) -> list[str]:
    with mesh.db.transaction() as connection:
        return [mesh.outbox.add(connection, TOPIC, f"transactions/t{i}", events_pb2.TransactionCompleted(
            transaction=f"transactions/t{i}", amount=common_pb2.Money(currency_code="USD", amount=f"{i}.00")))
            for i in range(1, n + 1)]


def states(mesh) -> list[tuple[str, int]]:
    with mesh.db.engine.connect() as connection:
        d = mesh.tables.deliveries
        return [(r.state, r.attempts) for r in connection.execute(select(d.c.state, d.c.attempts).order_by(d.c.id))]


async def relay_until(mesh, condition, rounds: int = 200):
    for _ in range(rounds):
        await mesh.relay.run_once()
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"relay never got there: {states(mesh)}")


async def test_events_are_delivered_and_a_redelivery_changes_nothing(mesh):
    await mesh.start_subscriber()
    publish(mesh, 3)
    assert await mesh.relay.run_once() == 3
    assert mesh.subscriber.handled() == 3 and states(mesh) == [(DELIVERED, 0)] * 3
    with mesh.db.transaction() as connection:   # as if the relay crashed before recording success
        connection.execute(update(mesh.tables.deliveries).values(state=PENDING))
    assert await mesh.relay.run_once() == 3
    assert mesh.subscriber.handled() == 3       # the inbox saw them before: no second effect


async def test_an_idle_relay_delivers_an_event_as_soon_as_its_unit_of_work_commits(mesh):
    """The relay's idle pause (60 s here) ends when a unit that published commits."""
    await mesh.start_subscriber()
    mesh.outbox.on_commit(mesh.relay.wake)
    units = UnitsOfWork(mesh.db, lambda connection: None, outbox=mesh.outbox)
    stop = asyncio.Event()
    running = asyncio.create_task(mesh.relay.run(stop, idle_seconds=60))
    await asyncio.sleep(0.2)                        # its first round found nothing: it waits
    started = time.monotonic()
    with units.begin() as unit:
        unit.publish(TOPIC, "transactions/t1", events_pb2.TransactionCompleted(
            transaction="transactions/t1", amount=common_pb2.Money(currency_code="USD", amount="1.00")))
    while mesh.subscriber.handled() < 1:
        assert time.monotonic() - started < 5, "the relay slept through the commit"
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(running, 5)


async def test_payloads_travel_encrypted(mesh):
    publish(mesh, 1)
    with mesh.db.engine.connect() as connection:
        envelope = events_pb2.EventEnvelope.FromString(connection.execute(select(mesh.tables.outbox.c.envelope)).scalar_one())
    assert envelope.encrypted and envelope.data_schema == "diboas.events.v1.TransactionCompleted"
    assert b"1.00" not in envelope.data


async def test_a_subscriber_that_is_down_is_retried_until_it_is_back(mesh):
    publish(mesh, 2)
    for _ in range(10):
        await mesh.relay.run_once()
        await asyncio.sleep(0.02)
    assert states(mesh) == [(PENDING, 0)] * 2    # retried, never counted as handler failures
    assert mesh.relay.dead_letters() == []
    await mesh.start_subscriber()
    await relay_until(mesh, lambda: mesh.subscriber.handled() == 2)
    assert states(mesh) == [(DELIVERED, 0)] * 2


async def test_a_failing_handler_is_dead_lettered_and_replayed_after_the_fix(mesh):
    await mesh.start_subscriber()
    mesh.subscriber.failing = True
    (event_id,) = publish(mesh, 1)
    labels = {"service": "transaction", "subscriber": "wallet", "topic": TOPIC, "reason": "HANDLER_FAILED"}
    alerts_before = REGISTRY.get_sample_value("diboas_dead_letters_total", labels) or 0
    await relay_until(mesh, lambda: states(mesh) == [(DEAD, 3)])
    (letter,) = mesh.relay.dead_letters()
    assert (letter.event_id, letter.attempts, letter.reason) == (event_id, 3, "HANDLER_FAILED")
    assert REGISTRY.get_sample_value("diboas_dead_letters_total", labels) == alerts_before + 1
    for _ in range(3):
        await mesh.relay.run_once()
    assert mesh.subscriber.handled() == 0       # dead letters are left alone until replayed
    mesh.subscriber.failing = False
    assert mesh.relay.replay() == 1
    await relay_until(mesh, lambda: mesh.subscriber.handled() == 1)
    assert mesh.relay.dead_letters() == [] and len(mesh.relay.dead_letters(include_replayed=True)) == 1


async def test_a_tampered_event_is_dead_lettered_at_once(mesh):
    await mesh.start_subscriber()
    publish(mesh, 1)
    with mesh.db.transaction() as connection:
        o = mesh.tables.outbox
        envelope = events_pb2.EventEnvelope.FromString(connection.execute(select(o.c.envelope)).scalar_one())
        envelope.data = bytes([envelope.data[0] ^ 1]) + envelope.data[1:]
        connection.execute(update(o).values(envelope=envelope.SerializeToString()))
    await mesh.relay.run_once()
    assert states(mesh) == [(DEAD, 1)]
    assert mesh.relay.dead_letters()[0].reason == "MESSAGE_TAMPERED"
    assert mesh.subscriber.handled() == 0


async def test_one_window_goes_in_one_call_and_each_event_fares_on_its_own(mesh):
    await mesh.start_subscriber()
    publish(mesh, 4)
    with mesh.db.transaction() as connection:                   # the third event tampered with
        o = mesh.tables.outbox
        row = connection.execute(select(o.c.id, o.c.envelope).order_by(o.c.id).offset(2).limit(1)).one()
        envelope = events_pb2.EventEnvelope.FromString(row.envelope)
        envelope.data = bytes([envelope.data[0] ^ 1]) + envelope.data[1:]
        connection.execute(update(o).where(o.c.id == row.id).values(envelope=envelope.SerializeToString()))
    mesh.subscriber.failing_amounts = {"2.00"}

    def answered() -> float:
        return REGISTRY.get_sample_value("diboas_rpc_server_calls_total",
                                         {"service": "wallet", "method": "DeliverEvents", "code": "OK"}) or 0
    before = answered()
    assert await mesh.relay.run_once() == 2
    assert answered() == before + 1                              # four events, one call
    assert states(mesh) == [(DELIVERED, 0), (PENDING, 1), (DEAD, 1), (DELIVERED, 0)]
    assert mesh.subscriber.handled() == 2
    mesh.subscriber.failing_amounts = set()
    await relay_until(mesh, lambda: mesh.subscriber.handled() == 3)
    assert states(mesh) == [(DELIVERED, 0), (DELIVERED, 1), (DEAD, 1), (DELIVERED, 0)]


class OlderSink(EventSink):
    """A subscriber of a release before DeliverEvents: it answers it UNIMPLEMENTED."""

    async def DeliverEvents(self, request, context):
        raise Unimplemented("wallet.DeliverEvents is not served here (an older release)")


async def test_a_subscriber_without_delivery_in_windows_gets_one_call_per_event(mesh):
    mesh.subscriber.served = OlderSink(mesh.subscriber.db, mesh.subscriber.tables, "wallet",
                                       KeyRing.load(mesh.topology.certs_dir), {TOPIC: mesh.subscriber._handle})
    await mesh.start_subscriber()
    publish(mesh, 3)
    mesh.subscriber.failing_amounts = {"2.00"}
    assert await mesh.relay.run_once() == 2
    assert states(mesh) == [(DELIVERED, 0), (PENDING, 1), (DELIVERED, 0)] and mesh.relay.dead_letters() == []


class SlowTransport:
    """Stands in for the subscriber: each call takes a moment; calls from the `down_from`-th on
    find it down. Counts the calls and how many were on their way at once."""

    def __init__(self, down_from: int | None = None):
        self.calls, self.on_the_way, self.most_at_once, self.down_from = [], 0, 0, down_from

    async def deliver_all(self, subscriber, deliveries):
        self.calls.append([envelope.subject for envelope, _ in deliveries])
        number = len(self.calls)
        self.on_the_way += 1
        self.most_at_once = max(self.most_at_once, self.on_the_way)
        try:
            await asyncio.sleep(0.05)
            if self.down_from is not None and number >= self.down_from:
                raise ServiceUnavailable("wallet: connection refused", reason="UNAVAILABLE")
            return [None] * len(deliveries)
        finally:
            self.on_the_way -= 1


async def test_windows_go_several_at_once_in_outbox_order_and_a_subscriber_found_down_ends_the_round(mesh):
    policy = DeliveryPolicy(window=2, in_flight=2, initial_backoff=0.01, max_backoff=0.05)
    subjects = [f"transactions/t{i}" for i in range(1, 10)]
    publish(mesh, 9)
    transport = SlowTransport()
    relay = Relay(mesh.db, mesh.tables, transport, "transaction", policy)
    assert await relay.run_once() == 9
    assert transport.most_at_once == 2 and [s for call in transport.calls for s in call] == subjects
    assert states(mesh) == [(DELIVERED, 0)] * 9

    publish(mesh, 9)              # the same subjects again: new events
    down = SlowTransport(down_from=2)
    relay = Relay(mesh.db, mesh.tables, down, "transaction", policy)
    assert await relay.run_once() == 2
    # The first two windows were on their way together; the second found the subscriber down,
    # and the windows after them were not sent.
    assert len(down.calls) == 2
    assert states(mesh)[9:] == [(DELIVERED, 0)] * 2 + [(PENDING, 0)] * 7


class ScriptedTransport:
    """Stands in for the subscriber: the n-th call waits `delays[n]` and then does `outcomes[n]`:
    "ok" (every event handled), "fails" (every event's handler fails), "cancelled" (the call is
    cancelled under the relay), "garbled" (an answer of the wrong length)."""

    def __init__(self, delays: list[float], outcomes: list[str]):
        self.delays, self.outcomes, self.calls = delays, outcomes, 0

    async def deliver_all(self, subscriber, deliveries):
        n, self.calls = self.calls, self.calls + 1
        await asyncio.sleep(self.delays[n])
        outcome = self.outcomes[n]
        if outcome == "cancelled":
            raise asyncio.CancelledError()
        if outcome == "garbled":
            return [None] * (len(deliveries) + 1)
        return [None if outcome == "ok" else RuntimeError("the handler has a bug")] * len(deliveries)


def _relay(mesh, transport, window: int = 2) -> Relay:
    return Relay(mesh.db, mesh.tables, transport, "transaction",
                 DeliveryPolicy(window=window, in_flight=4, max_attempts=3, initial_backoff=0.01, max_backoff=0.05))


async def test_a_window_that_fails_holds_back_no_other(mesh):
    """No order is promised between events: the first window's failure is retried after the
    second's events were delivered."""
    publish(mesh, 4)
    assert await _relay(mesh, ScriptedTransport([0.05, 0.0], ["fails", "ok"])).run_once() == 2
    assert states(mesh) == [(PENDING, 1)] * 2 + [(DELIVERED, 0)] * 2


async def test_every_window_of_a_round_ends_and_every_error_is_told(mesh, caplog):
    publish(mesh, 6)
    transport = ScriptedTransport([0.0, 0.02, 0.04], ["garbled", "garbled", "ok"])
    with pytest.raises(ValueError):
        await _relay(mesh, transport).run_once()
    assert transport.calls == 3 and states(mesh)[4:] == [(DELIVERED, 0)] * 2    # the last window ended too
    assert [r.message for r in caplog.records if r.name == "diboas.relay"] == ["event delivery round failed"]


async def test_a_call_cancelled_under_the_relay_is_a_subscriber_down_and_the_relay_goes_on(mesh):
    publish(mesh, 2)
    relay = _relay(mesh, ScriptedTransport([0.0, 0.0], ["cancelled", "ok"]))
    assert await relay.run_once() == 0
    assert states(mesh) == [(PENDING, 0)] * 2           # no attempt counted, retried after a backoff
    await asyncio.sleep(0.06)
    assert await relay.run_once() == 2


async def test_a_relay_that_is_cancelled_stops_and_leaves_its_deliveries_pending(mesh):
    publish(mesh, 2)
    round_ = asyncio.create_task(_relay(mesh, ScriptedTransport([5.0], ["ok"])).run_once())
    await asyncio.sleep(0.1)
    round_.cancel()
    with pytest.raises(asyncio.CancelledError):
        await round_
    assert states(mesh) == [(PENDING, 0)] * 2


async def test_a_record_changes_only_a_delivery_that_is_still_pending(mesh):
    """A late record of a round (a success, or a failure that would dead-letter) leaves a
    delivery that was meanwhile delivered or dead-lettered as it is."""
    publish(mesh, 2)
    relay = _relay(mesh, ScriptedTransport([], []))
    first, second = await mesh.db.run(relay._due)
    d = mesh.tables.deliveries
    with mesh.db.transaction() as connection:
        connection.execute(update(d).where(d.c.id == first.id).values(state=DELIVERED))
        connection.execute(update(d).where(d.c.id == second.id).values(state=DEAD, attempts=3))
    last_try = first._replace(attempts=2)               # this failure would be its last attempt
    await mesh.db.run(relay._record_failure, last_try, RuntimeError("the handler has a bug"))
    await mesh.db.run(relay._record_success, [second.id])
    assert states(mesh) == [(DELIVERED, 0), (DEAD, 3)] and relay.dead_letters() == []
