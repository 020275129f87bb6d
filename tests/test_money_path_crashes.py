"""The money invariant with the services as real processes under a burst of SENDs, also with
one of them killed (SIGKILL) and restarted in the middle: in the end every transaction is
COMPLETED or FAILED, every completed one settled exactly once, nothing is left held, no balance
is negative, and the sum of all balances is what it was."""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from decimal import Decimal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from diboas.common.v1 import common_pb2
from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.runtime.config import load_topology

from conftest import bearer, client_channel, free_port, postgres_schema, service_token

pytestmark = pytest.mark.slow
WALLETS, FUNDS, SENDS = 50, "100.00", 2000


class Process:
    def __init__(self, name: str, env: dict, log_dir):
        self.name, self.env, self.log_dir, self.process = name, env, log_dir, None

    def start(self) -> None:
        log = open(self.log_dir / f"{self.name}.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def mesh(request, pki, tmp_path):
    env = dict(os.environ, DIBOAS_CERTS_DIR=str(pki), DIBOAS_STATE_DIR=str(tmp_path), DIBOAS_UNREADY_SECONDS="0",
               DIBOAS_DRAIN_SECONDS="2", DIBOAS_TRACING="off")
    schemas = contextlib.ExitStack()
    if request.param == "postgres":   # each service its own database (here: its own schema)
        env["DIBOAS_WALLET_DATABASE"] = schemas.enter_context(postgres_schema())
        env["DIBOAS_TRANSACTION_DATABASE"] = schemas.enter_context(postgres_schema())
    for name in ("wallet", "transaction", "provider", "blockchain"):
        env[f"DIBOAS_{name.upper()}_ADDRESS"] = f"127.0.0.1:{free_port()}"
        env[f"DIBOAS_{name.upper()}_METRICS"] = f"127.0.0.1:{free_port()}"
    topology = load_topology(env={k: v for k, v in env.items() if k.startswith("DIBOAS_")})
    processes = {name: Process(name, env, tmp_path) for name in ("wallet", "transaction")}
    for process in processes.values():
        process.start()
    m = Mesh(topology, processes)
    await m.wait_serving("wallet")
    await m.wait_serving("transaction")
    yield m
    for process in processes.values():
        process.stop()
    await m.close()
    schemas.close()


class Mesh:
    def __init__(self, topology, processes):
        self.topology, self.processes = topology, processes
        self.wallet_channel = client_channel(topology, "operator", topology.services["wallet"].address.port, "wallet")
        self.tx_channel = client_channel(topology, "gateway", topology.services["transaction"].address.port,
                                         "transaction")
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self.wallet_channel)
        self.transactions = transaction_pb2_grpc.TransactionServiceStub(self.tx_channel)
        self.as_operator = bearer(service_token(topology, "operator", "wallet"))
        self.as_gateway = bearer(service_token(topology, "gateway", "transaction"))

    async def close(self):
        await self.wallet_channel.close()
        await self.tx_channel.close()

    async def wait_serving(self, name: str, timeout: float = 30) -> None:
        service = self.topology.services[name]
        deadline = asyncio.get_running_loop().time() + timeout
        async with client_channel(self.topology, "operator", service.address.port, name) as channel:
            while True:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, f"{name} did not start"
                await asyncio.sleep(0.1)

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
