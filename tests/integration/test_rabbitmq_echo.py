"""An instance hears back the events any instance publishes on its topics (EventEcho, over a real
RabbitMQ): what wakes a WatchTransaction whose transaction another instance settled. Nothing is
declared on the broker until something asks for it."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from diboas.events.v1 import events_pb2
from diboas.transaction.v1 import transaction_pb2
from services.domain.clock import utcnow
from services.domain.money import Money
from services.runtime.config import Messaging
from services.runtime.db import Database
from services.runtime.messaging.rabbit import Broker
from services.runtime.messaging.rabbit_echo import EventEcho
from services.runtime.messaging.rabbit_events import RabbitTransport
from services.transaction.domain import COMPLETED, PENDING, SEND, Transaction
from services.transaction.repository import TransactionRepository
from tools.rabbitmq import rabbitmqctl

from meshkit import start_mesh

pytestmark = pytest.mark.rabbitmq
TOPIC = "transaction.completed"


async def listening(vhost: str) -> None:
    """Until the echo's queue has its consumer (declared, bound, then consumed: in that order)."""
    for _ in range(300):
        queues = rabbitmqctl("list_queues", "-p", vhost, "name", "consumers").split("\n")
        if any(".echo." in line and line.split()[-1] == "1" for line in queues):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the echo's queue got no consumer in 30 s")


def envelope(subject: str) -> events_pb2.EventEnvelope:
    return events_pb2.EventEnvelope(id=subject.replace("/", "-"), source="transaction", spec_version="1.0",
                                    type=TOPIC, subject=subject)


async def test_an_instance_hears_the_subject_of_each_event_another_one_publishes_once_it_asks(rabbitmq_url):
    vhost = rabbitmq_url.rsplit("/", 1)[-1]
    listener, publisher = Broker(Messaging("rabbitmq", rabbitmq_url, "e"), "one"), \
        Broker(Messaging("rabbitmq", rabbitmq_url, "e"), "two")
    heard, stop = [], asyncio.Event()
    echo = EventEcho(listener, "transaction", [TOPIC, "transaction.failed"], heard.append)
    running = asyncio.create_task(echo.run(stop))
    transport = RabbitTransport(publisher, {"wallet": [TOPIC]})
    try:
        await transport.deliver("wallet", envelope("transactions/before"), 1)
        await asyncio.sleep(0.3)
        assert ".echo." not in rabbitmqctl("list_queues", "-p", vhost, "name")      # not asked yet: nothing
        echo.wanted()
        await listening(vhost)
        for n in range(3):
            await transport.deliver("wallet", envelope(f"transactions/t{n}"), 1)
        for _ in range(100):
            if len(heard) == 3:
                break
            await asyncio.sleep(0.05)
        assert heard == ["transactions/t0", "transactions/t1", "transactions/t2"]
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await listener.close()
        await publisher.close()


@pytest.fixture
async def mesh(topology, start_server, database_url, rabbitmq_url):
    topology = dataclasses.replace(topology, messaging=Messaging("rabbitmq", rabbitmq_url, "w"))
    mesh = await start_mesh(topology, start_server, ("wallet", "transaction", "compliance"), transaction=database_url)
    yield mesh
    await mesh.close()


async def test_a_watch_hears_at_once_of_an_outcome_that_another_instance_committed(mesh, rabbitmq_url):
    """The other instance: the transaction written into the shared database behind this
    instance's back, and its event published. Only the event can wake the watch before its
    10 s re-read."""
    db = Database(mesh.topology.services["transaction"].database, None)
    now = utcnow()
    tx = Transaction("elsewhere1", SEND, PENDING, "wallets/a", "wallets/b", Money.parse("USD", "1.00"), "", "", now,
                     now, None, source_owner="alice", destination_owner="bob")
    with db.transaction() as connection:
        TransactionRepository(connection).add(tx)
    seen, loop = [], asyncio.get_running_loop()

    async def watch() -> None:
        stream = mesh.transactions.WatchTransaction(transaction_pb2.WatchTransactionRequest(name=tx.name),
                                                    metadata=mesh.as_user("alice"), timeout=30)
        async for reply in stream:
            seen.append((loop.time(), reply.transaction.state))
    watching = asyncio.create_task(watch())
    publisher = Broker(Messaging("rabbitmq", rabbitmq_url, "w"), "the other instance")
    try:
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        await listening(rabbitmq_url.rsplit("/", 1)[-1])       # declared on the first watch
        tx.move_to(COMPLETED, utcnow())
        with db.transaction() as connection:
            assert TransactionRepository(connection).save_progress(tx)
        committed = loop.time()
        await RabbitTransport(publisher, {"nobody": [TOPIC]}).deliver("nobody", envelope(tx.name), 1)
        await asyncio.wait_for(watching, 8)
    finally:
        watching.cancel()
        await publisher.close()
        db.close()
    assert [state for _, state in seen] == [transaction_pb2.TRANSACTION_STATE_PENDING,
                                            transaction_pb2.TRANSACTION_STATE_COMPLETED]
    assert seen[-1][0] - committed < 3, "woken by the 10 s re-read, not by the event"
