"""The RabbitMQ connection of a service: made on first use, refused clearly while the broker is
away, and reported by health as a missing dependency without taking the service down."""
from __future__ import annotations

import dataclasses

import aio_pika
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.domain.errors import ServiceUnavailable
from services.monitor import check_service
from services.runtime.config import Address, Messaging
from services.runtime.messaging.rabbit import Broker
from services.runtime.tls import load_identity
from services.wallet.app import build as wallet_app

from conftest import client_channel, free_port, with_service

pytestmark = pytest.mark.rabbitmq
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_channel_publishes_with_confirms(rabbitmq_url):
    broker = Broker(Messaging("rabbitmq", rabbitmq_url, "t"), "test")
    assert "not connected yet" in broker.problem()
    try:
        channel = await broker.channel()
        queue = await channel.declare_queue(broker.names.event_queue("probe"), durable=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), routing_key=queue.name)
        assert broker.problem() is None
        message = await queue.get(timeout=5)
        assert message.body == b"hello"
        await message.ack()
    finally:
        await broker.close()


async def test_an_unreachable_broker_is_a_clear_service_unavailable():
    port = free_port()
    broker = Broker(Messaging("rabbitmq", f"amqp://guest:guest@127.0.0.1:{port}/", "t"), "test")
    with pytest.raises(ServiceUnavailable) as raised:
        await broker.channel()
    assert raised.value.reason == "BROKER_UNAVAILABLE"
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert f"127.0.0.1:{port}" in broker.problem()


async def test_health_names_a_missing_broker_and_the_service_keeps_serving(topology, start_server):
    away = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    topology = dataclasses.replace(topology, messaging=Messaging("rabbitmq", away, "t"))
    server = await start_server(topology, "wallet", wallet_app)
    async with client_channel(topology, "operator", server.port, "wallet") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        overall = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
        broker = await stub.Check(health_pb2.HealthCheckRequest(service="rabbitmq"), timeout=3)
    assert overall.status == SERVING
    assert broker.status == NOT_SERVING
    # `diboas health` says so: serving, and what is away
    topology = with_service(topology, "wallet", address=Address("127.0.0.1", server.port))
    report = await check_service(topology, "wallet", load_identity(topology.certs_dir, "operator"), 3)
    assert (report.status, report.missing) == ("SERVING", ("rabbitmq",))
    assert "rabbitmq is away" in report.error
