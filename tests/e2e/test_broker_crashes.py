"""The money invariant with events over RabbitMQ, the services as real processes under a burst of
SENDs: with the wallet (the events' consumer) or the transaction service (their producer) killed
with SIGKILL and restarted mid-burst, and with the broker itself stopped (`rabbitmqctl stop_app`)
and started again mid-burst. In the end every transaction is COMPLETED or FAILED, every completed
one settled exactly once, nothing is left held, no balance is negative, the sum of all balances is
what it was, and every delivery was confirmed by the broker."""
from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, select

from diboas.transaction.v1 import transaction_pb2
from services.transaction.tables import messaging as tx_tables
from tools.rabbitmq import rabbitmqctl

from test_money_path_crashes import FUNDS, WALLETS, databases, money_mesh

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq, pytest.mark.timeout(300)]
SENDS = 600


@contextlib.asynccontextmanager
async def brokered_mesh(pki, tmp_path, backend: str, rabbitmq_url: str):
    with databases(backend) as urls:
        env = {**urls, "DIBOAS_MESSAGING_TRANSPORT": "rabbitmq", "DIBOAS_RABBITMQ_URL": rabbitmq_url}
        async with money_mesh(pki, tmp_path, "services", env) as mesh:
            yield mesh


@contextlib.asynccontextmanager
async def broker_stopped():
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


async def _burst(mesh, disruption) -> None:
    names = await mesh.funded_wallets(WALLETS, FUNDS)
    burst = mesh.sends(names, SENDS, seed=11)
    await mesh.under_way(burst, SENDS // 5)
    await disruption(mesh)
    await burst
    txs = await mesh.assert_conserved(names, Decimal(FUNDS) * WALLETS, SENDS)
    completed = [t for t in txs if t.state == transaction_pb2.TRANSACTION_STATE_COMPLETED]
    assert len(completed) > SENDS // 4
    engine = create_engine(mesh.topology.services["transaction"].database)
    try:
        with engine.connect() as connection:
            states = {row.state for row in connection.execute(select(tx_tables.deliveries.c.state))}
    finally:
        engine.dispose()
    assert states == {"DELIVERED"}


def kill(victim: str):
    async def disruption(mesh) -> None:
        await mesh.restart(victim, after=1.0)
    return disruption


async def stop_the_broker(mesh) -> None:
    async with broker_stopped():
        await asyncio.sleep(3)


# (Two instances of each, one SIGKILLed, over the broker on PostgreSQL: tests/e2e/test_instances_under_load.py.)
@pytest.mark.parametrize("backend, disruption", [
    ("sqlite", kill("wallet")), ("sqlite", kill("transaction")), ("sqlite", stop_the_broker),
    pytest.param("postgres", stop_the_broker, marks=pytest.mark.postgres),
], ids=["sqlite-kill-wallet", "sqlite-kill-transaction", "sqlite-broker-stopped", "postgres-broker-stopped"])
async def test_money_is_conserved_over_the_broker(pki, tmp_path, rabbitmq_url, backend, disruption):
    async with brokered_mesh(pki, tmp_path, backend, rabbitmq_url) as mesh:
        await _burst(mesh, disruption)
