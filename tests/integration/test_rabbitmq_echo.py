"""An instance hears back the events any instance publishes on its topics (EventEcho, over a real
RabbitMQ): what wakes a WatchTransaction whose transaction another instance settled. Nothing is
declared on the broker until something asks for it."""
from __future__ import annotations

import asyncio

import pytest

from diboas.events.v1 import events_pb2
from services.runtime.config import Messaging
from services.runtime.messaging.rabbit import Broker
from services.runtime.messaging.rabbit_echo import EventEcho
from services.runtime.messaging.rabbit_events import RabbitTransport
from tools.rabbitmq import rabbitmqctl

pytestmark = pytest.mark.rabbitmq
TOPIC = "transaction.completed"


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
        for _ in range(100):
            if ".echo." in rabbitmqctl("list_queues", "-p", vhost, "name"):
                break
            await asyncio.sleep(0.1)
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
