"""The money invariant with the services as real processes under a burst of SENDs, also with
one of them killed (SIGKILL) and restarted in the middle: in the end every transaction is
COMPLETED or FAILED, every completed one settled exactly once, nothing is left held, no balance
is negative, and the sum of all balances is what it was."""
from __future__ import annotations

import asyncio
import contextlib
import random
from decimal import Decimal

import grpc
import pytest

from diboas.common.v1 import common_pb2
from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.runtime.config import load_topology

from conftest import bearer, client_channel, postgres_schema, service_token, user_token
from meshkit import Process, process_env, running, wait_serving

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


class Mesh:
    def __init__(self, topology, processes):
        self.topology, self.processes = topology, processes
        self.wallet_channel = client_channel(topology, "operator", topology.services["wallet"].address.port, "wallet")
        self.tx_channel = client_channel(topology, "gateway", topology.services["transaction"].address.port,
                                         "transaction")
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self.wallet_channel)
        self.transactions = transaction_pb2_grpc.TransactionServiceStub(self.tx_channel)
        self.as_operator = bearer(service_token(topology, "operator", "wallet"))
        self.as_gateway = bearer(user_token(topology))

    async def close(self):
        await self.wallet_channel.close()
        await self.tx_channel.close()

    async def wait_serving(self, name: str) -> None:
        await wait_serving(self.topology, name)

    async def restart(self, name: str, after: float) -> None:
        self.processes[name].kill()
        await asyncio.sleep(after)
        self.processes[name].start()
        await self.wait_serving(name)

    async def call(self, fn, request, metadata, attempts: int = 200):
        """Retry through outages (the test's own client; the mesh's clients have their own policies)."""
        for _ in range(attempts):
            try:
                return await fn(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("service never came back")

    async def balances(self, names):
        out = []
        for name in names:
            w = (await self.call(self.wallets.GetWallet, wallet_pb2.GetWalletRequest(name=name), self.as_operator)).wallet
            out.append((Decimal(w.available_balance.amount), Decimal(w.held_balance.amount)))
        return out

    async def all_transactions(self):
        found, token = [], ""
        while True:
            page = await self.call(self.transactions.ListTransactions,
                                   transaction_pb2.ListTransactionsRequest(page_size=500, page_token=token),
                                   self.as_gateway)
            found += page.transactions
            if not (token := page.next_page_token):
                return found


async def _burst(mesh: Mesh, victim: str | None) -> None:
    names = []
    for i in range(WALLETS):
        reply = await mesh.call(mesh.wallets.CreateWallet, wallet_pb2.CreateWalletRequest(
            wallet=wallet_pb2.Wallet(owner_id=f"o{i}", currency_code="USD"), request_id=f"w{i}"), mesh.as_operator)
        names.append(reply.wallet.name)
        await mesh.call(mesh.wallets.CreditWallet, wallet_pb2.CreditWalletRequest(
            wallet=reply.wallet.name, amount=common_pb2.Money(currency_code="USD", amount=FUNDS), request_id=f"f{i}"),
            mesh.as_operator)
    total = Decimal(FUNDS) * WALLETS
    rng = random.Random(5)
    gate = asyncio.Semaphore(32)

    async def send(n: int) -> None:
        source, destination = rng.sample(names, 2)
        request = transaction_pb2.CreateTransactionRequest(request_id=f"s{n}", transaction=transaction_pb2.Transaction(
            type=transaction_pb2.TRANSACTION_TYPE_SEND, source_wallet=source, destination_wallet=destination,
            amount=common_pb2.Money(currency_code="USD", amount=f"{rng.randint(1, 3000) / 100:.2f}")))
        async with gate:
            try:   # retried by request_id through the outage: at most one transaction per request
                await mesh.call(mesh.transactions.CreateTransaction, request, mesh.as_gateway)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()   # not enough money

    burst = asyncio.ensure_future(asyncio.gather(*(send(n) for n in range(SENDS))))
    if victim:
        await asyncio.sleep(1.5)
        assert not burst.done(), "the burst ended before the crash: make it longer"
        await mesh.restart(victim, after=1.0)            # SIGKILL in the middle, then back
    await burst

    deadline = asyncio.get_running_loop().time() + 240
    while True:
        txs = await mesh.all_transactions()
        balances = await mesh.balances(names)
        pending = [t for t in txs if t.state not in (transaction_pb2.TRANSACTION_STATE_COMPLETED,
                                                     transaction_pb2.TRANSACTION_STATE_FAILED)]
        if not pending and not any(held for _, held in balances):
            break
        assert asyncio.get_running_loop().time() < deadline, f"{len(pending)} pending, still held: {balances}"
        await asyncio.sleep(0.5)
    assert len({t.name for t in txs}) == len(txs) <= SENDS
    assert sum(available for available, _ in balances) == total          # nothing created or lost
    assert all(available >= 0 for available, _ in balances)
    for tx in txs:                                                        # each completed one settled once
        if tx.state == transaction_pb2.TRANSACTION_STATE_COMPLETED:
            hold = (await mesh.call(mesh.wallets.GetHold, wallet_pb2.GetHoldRequest(name=tx.hold),
                                    mesh.as_operator)).hold
            assert hold.state == wallet_pb2.HOLD_STATE_CAPTURED and hold.destination_wallet == tx.destination_wallet
    completed = [t for t in txs if t.state == transaction_pb2.TRANSACTION_STATE_COMPLETED]
    assert len(completed) > SENDS // 4


@pytest.mark.parametrize("victim", [None, "wallet", "transaction"])
async def test_money_is_conserved_under_load_and_crashes(mesh, victim):
    """2,000 concurrent SENDs among 50 wallets; with a service killed and restarted mid-way, or not."""
    await _burst(mesh, victim)
