"""Events over RabbitMQ: the relay publishes each delivery with publisher confirms and marks it
delivered only then; the wallet consumes its own queue and settles exactly once, acknowledging
only after its transaction committed; a tampered event goes to the dead-letter queue at once;
a broker that goes away makes the work wait in the database, and nothing is lost once it is back."""
from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

import aio_pika
import pytest
from sqlalchemy import create_engine, select

from diboas.events.v1 import events_pb2
from diboas.transaction.v1 import transaction_pb2
from services.domain.clock import utcnow
from services.domain.errors import ServiceUnavailable
from services.runtime.config import Messaging
from services.runtime.messaging.rabbit import Broker
from services.runtime.messaging.rabbit_events import EventConsumer, RabbitTransport
from services.runtime.messaging.relay import DeliveryPolicy
from services.runtime.messaging.secure import KeyRing, seal
from services.runtime.messaging.store import DELIVERED
from services.runtime.wire import timestamp
from services.transaction.tables import messaging as tx_tables
from services.transaction.tables import work_items as tx_work_items
from services.wallet.tables import messaging as wallet_tables
from tools.rabbitmq import rabbitmqctl

from conftest import free_port
from meshkit import start_mesh
from test_messaging import Subscriber

pytestmark = pytest.mark.rabbitmq
COMPLETED = transaction_pb2.TRANSACTION_STATE_COMPLETED
PREFIX = "t"


@pytest.fixture
async def mesh(topology, start_server, database_url, rabbitmq_url):
    topology = dataclasses.replace(topology, messaging=Messaging("rabbitmq", rabbitmq_url, PREFIX))
    mesh = await start_mesh(topology, start_server, ("wallet", "transaction", "compliance"), wallet=database_url)
    mesh.rabbitmq_url = rabbitmq_url
    yield mesh
    await mesh.close()


def rows(url: str, table):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(table)))
    finally:
        engine.dispose()


async def queue_depth(url: str, name: str) -> int:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count
    finally:
        await connection.close()


async def settle(mesh, source: str, destination: str, amount: str, key: str):
    tx = await mesh.settled((await mesh.send(source, destination, amount, key)).name)
    assert tx.state == COMPLETED
    await mesh.wait_until_settled([source, destination])
    return tx


async def test_a_send_settles_once_through_the_broker(mesh):
    alice, bob = await mesh.wallet("alice", "100.00"), await mesh.wallet("bob", "0")
    await settle(mesh, alice, bob, "30.00", "s1")
    assert await mesh.balances(alice) == (Decimal("70.00"), 0)
    assert await mesh.balances(bob) == (Decimal("30.00"), 0)
    deliveries = rows(mesh.topology.services["transaction"].database, tx_tables.deliveries)
    assert [d.state for d in deliveries] == [DELIVERED]
    assert len(rows(mesh.topology.services["wallet"].database, wallet_tables.inbox)) == 1
    assert await queue_depth(mesh.rabbitmq_url, f"{PREFIX}.events.wallet") == 0


async def test_an_event_published_twice_settles_once(mesh):
    alice, bob = await mesh.wallet("alice", "100.00"), await mesh.wallet("bob", "0")
    await settle(mesh, alice, bob, "30.00", "s1")
    outbox = rows(mesh.topology.services["transaction"].database, tx_tables.outbox)
    envelope = events_pb2.EventEnvelope.FromString(outbox[0].envelope)
    broker = Broker(mesh.topology.messaging, "test")
    try:
        await RabbitTransport(broker, {"wallet": ["transaction.completed"]}).deliver("wallet", envelope, 1)
    finally:
        await broker.close()
    await mesh.wait_until(lambda: queue_depth(mesh.rabbitmq_url, f"{PREFIX}.events.wallet"), 0)
    assert await mesh.balances(alice) == (Decimal("70.00"), 0)
    assert await mesh.balances(bob) == (Decimal("30.00"), 0)
    assert len(rows(mesh.topology.services["wallet"].database, wallet_tables.inbox)) == 1


async def test_a_tampered_event_goes_to_the_dead_letter_queue_at_once(mesh):
    alice, bob = await mesh.wallet("alice", "100.00"), await mesh.wallet("bob", "0")
    await settle(mesh, alice, bob, "30.00", "s1")
    outbox = rows(mesh.topology.services["transaction"].database, tx_tables.outbox)
    envelope = events_pb2.EventEnvelope.FromString(outbox[0].envelope)
    envelope.id = "forged-1"                    # bound into the encryption: the payload no longer opens
    broker = Broker(mesh.topology.messaging, "test")
    try:
        await RabbitTransport(broker, {"wallet": ["transaction.completed"]}).deliver("wallet", envelope, 1)
        dead = f"{PREFIX}.events.wallet.dead"
        assert await mesh.wait_until(lambda: queue_depth(mesh.rabbitmq_url, dead), 1) == 1
    finally:
        await broker.close()
    assert await mesh.balances(bob) == (Decimal("30.00"), 0)
    assert len(rows(mesh.topology.services["wallet"].database, wallet_tables.inbox)) == 1


async def test_an_unreachable_broker_is_the_relays_subscriber_down():
    broker = Broker(Messaging("rabbitmq", f"amqp://guest:guest@127.0.0.1:{free_port()}/", PREFIX), "test")
    transport = RabbitTransport(broker, {"wallet": ["transaction.completed"]})
    with pytest.raises(ServiceUnavailable) as raised:
        await transport.deliver("wallet", events_pb2.EventEnvelope(id="e1", type="transaction.completed"), 1)
    assert raised.value.reason == "BROKER_UNAVAILABLE"       # retried for as long as it takes, never dead-lettered


async def test_the_transport_counts_what_waits_in_the_subscribers_queues(rabbitmq_url):
    """Published and not taken by a consumer yet (what the transaction service's backlog counts
    outside its database); while the broker cannot be asked, the last count it gave."""
    broker = Broker(Messaging("rabbitmq", rabbitmq_url, PREFIX), "test")
    transport = RabbitTransport(broker, {"wallet": ["transaction.completed"]})
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    try:
        assert await transport.waiting() == 0 and broker.problem() is not None     # not connected by a count
        for n in range(3):
            await transport.deliver("wallet", events_pb2.EventEnvelope(id=f"w{n}", type="transaction.completed"), 1)
        assert await transport.waiting() == 3 == await queue_depth(rabbitmq_url, f"{PREFIX}.events.wallet")
        rabbitmqctl("clear_permissions", "-p", vhost, "guest")
        rabbitmqctl("close_all_connections", "-p", vhost, "test: the broker goes away")
        try:
            assert await asyncio.wait_for(transport.waiting(), 20) == 3
        finally:
            rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    finally:
        await broker.close()


async def test_nothing_is_lost_while_the_broker_is_away(mesh):
    alice, bob = await mesh.wallet("alice", "100.00"), await mesh.wallet("bob", "0")
    await settle(mesh, alice, bob, "1.00", "warm")
    vhost = mesh.rabbitmq_url.rsplit("/", 1)[1]
    rabbitmqctl("clear_permissions", "-p", vhost, "guest")
    rabbitmqctl("close_all_connections", "-p", vhost, "test: the broker goes away")
    try:
        sent = [await mesh.send(alice, bob, "2.00", f"away-{n}") for n in range(5)]
        await asyncio.sleep(2)
        database = mesh.topology.services["transaction"].database
        # Each saga either ran at once in the process that created it (its item is gone, its event
        # waits in the outbox) or waits in the database for a message, undispatched.
        waiting = {w.item: w for w in rows(database, tx_work_items)}
        assert not any(w.dispatched for w in waiting.values())
        ran = [tx for tx in sent if tx.name.split("/")[1] not in waiting]
        undelivered = [d for d in rows(database, tx_tables.deliveries) if d.state != DELIVERED]
        assert len(undelivered) == len(ran)
        assert await mesh.balances(bob) == (Decimal("1.00"), 0)          # nothing settled meanwhile
    finally:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    for tx in sent:
        assert (await mesh.settled(tx.name)).state == COMPLETED
    await mesh.wait_until_settled([alice, bob], timeout=60)
    assert await mesh.balances(alice) == (Decimal("89.00"), 0)
    assert await mesh.balances(bob) == (Decimal("11.00"), 0)
    assert {d.state for d in rows(database, tx_tables.deliveries)} == {DELIVERED}


async def test_a_failing_handler_is_tried_again_then_dead_lettered(topology, tmp_path, rabbitmq_url):
    """The subscriber's handler fails every time: the broker redelivers it up to the policy's
    attempts, then it waits in the dead-letter queue; nothing of it was applied."""
    subscriber = Subscriber(topology, tmp_path)
    subscriber.failing = True
    broker = Broker(Messaging("rabbitmq", rabbitmq_url, PREFIX), "test")
    consumer = EventConsumer(broker, subscriber.sink, "wallet", "wallet",
                             DeliveryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        envelope = events_pb2.EventEnvelope(id="e-fails", source="transaction", type="transaction.completed",
                                            subject="transactions/1")
        envelope.time.CopyFrom(timestamp(utcnow()))
        seal(envelope, events_pb2.TransactionCompleted().SerializeToString(), KeyRing.load(topology.certs_dir))
        await RabbitTransport(broker, {"wallet": ["transaction.completed"]}).deliver("wallet", envelope, 1)
        deadline = asyncio.get_running_loop().time() + 20
        while await queue_depth(rabbitmq_url, f"{PREFIX}.events.wallet.dead") != 1:
            assert asyncio.get_running_loop().time() < deadline, "never dead-lettered"
            await asyncio.sleep(0.1)
        assert await queue_depth(rabbitmq_url, f"{PREFIX}.events.wallet") == 0
        assert subscriber.handled() == 0
    finally:
        stop.set()
        await running
        await broker.close()
