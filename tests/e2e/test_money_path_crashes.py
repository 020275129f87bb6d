"""The money invariant with the services as real processes under a burst of SENDs, also with
one of them killed (SIGKILL) and restarted in the middle: in the end every transaction is
COMPLETED or FAILED, every completed one settled exactly once, nothing is left held, no balance
is negative, and the sum of all balances is what it was."""
from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import pytest

from diboas.transaction.v1 import transaction_pb2
from services.runtime.config import load_topology

from conftest import postgres_schema
from meshkit import MoneyClient, Process, process_env, running, wait_serving

pytestmark = pytest.mark.slow
WALLETS, FUNDS, SENDS = 50, "100.00", 2000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def mesh(request, pki, tmp_path):
    env = process_env(pki, tmp_path)
    schemas = contextlib.ExitStack()
    if request.param == "postgres":   # each service its own database (here: its own schema)
        env["DIBOAS_WALLET_DATABASE"] = schemas.enter_context(postgres_schema())
        env["DIBOAS_TRANSACTION_DATABASE"] = schemas.enter_context(postgres_schema())
    topology = load_topology(env={k: v for k, v in env.items() if k.startswith("DIBOAS_")})
    processes = {name: Process(name, env, tmp_path) for name in ("wallet", "transaction")}
    with schemas:
        async with running(list(processes.values()), topology):
            m = Mesh(topology, processes)
            yield m
            await m.close()


class Mesh(MoneyClient):
    def __init__(self, topology, processes):
        super().__init__(topology)
        self.processes = processes

    async def wait_serving(self, name: str) -> None:
        await wait_serving(self.topology, name)

    async def restart(self, name: str, after: float) -> None:
        self.processes[name].kill()
        await asyncio.sleep(after)
        self.processes[name].start()
        await self.wait_serving(name)


async def _burst(mesh: Mesh, victim: str | None) -> None:
    names = await mesh.funded_wallets(WALLETS, FUNDS)
    burst = mesh.sends(names, SENDS, seed=5)
    if victim:
        await asyncio.sleep(1.5)
        assert not burst.done(), "the burst ended before the crash: make it longer"
        await mesh.restart(victim, after=1.0)            # SIGKILL in the middle, then back
    await burst
    txs = await mesh.assert_conserved(names, Decimal(FUNDS) * WALLETS, SENDS)
    completed = [t for t in txs if t.state == transaction_pb2.TRANSACTION_STATE_COMPLETED]
    assert len(completed) > SENDS // 4


@pytest.mark.parametrize("victim", [None, "wallet", "transaction"])
async def test_money_is_conserved_under_load_and_crashes(mesh, victim):
    """2,000 concurrent SENDs among 50 wallets; with a service killed and restarted mid-way, or not."""
    await _burst(mesh, victim)
