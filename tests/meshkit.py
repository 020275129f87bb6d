"""A whole mesh in the test process: every service's real composition root on a real mTLS
port, wired to each other through the topology, and helpers that speak to it as the gateway
and the operator would."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from decimal import Decimal
from importlib import import_module
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from diboas.blockchain.v1 import blockchain_pb2_grpc
from diboas.common.v1 import common_pb2
from diboas.compliance.v1 import compliance_pb2, compliance_pb2_grpc
from diboas.provider.v1 import provider_pb2_grpc
from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from services.runtime.config import DEFAULT_TOPOLOGY, Address, load_topology
from services.runtime.processes import entry_command, tied_to_parent
from tools.ports import mesh_addresses

from conftest import bearer, client_channel, service_token, user_token, with_service

SETTLED = (transaction_pb2.TRANSACTION_STATE_COMPLETED, transaction_pb2.TRANSACTION_STATE_FAILED)
ORDER = load_topology(env={}).start_order      # every service of mesh.yaml, upstreams first


def topology_with_a_service(tmp_path, name: str, upstreams=()) -> Path:
    """A topology file: the shipped one with one more service (listed first), as
    docs/adding-a-service.md adds one; its path."""
    raw = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    raw["services"] = {name: {"address": "127.0.0.1:50099", "metrics": "127.0.0.1:9199",
                              "database": f"sqlite:///{{state_dir}}/{name}.db", "upstreams": list(upstreams),
                              "policy": {"*": ["operator"]}}, **raw["services"]}
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def usd(amount: str) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USD", amount=amount)


class Mesh:
    def __init__(self, topology, ports: dict[str, int]):
        self.topology, self.ports, self.channels = topology, ports, []
        self.env = dict(os.environ, DIBOAS_CERTS_DIR=str(topology.certs_dir),
                        **{f"DIBOAS_{n.upper()}_ADDRESS": f"127.0.0.1:{p}" for n, p in ports.items()})

        def stub(service: str, identity: str, cls):
            if service not in ports:
                return None
            channel = client_channel(topology, identity, ports[service], service)
            self.channels.append(channel)
            token = user_token(topology) if identity == "gateway" else service_token(topology, identity, service)
            return cls(channel), bearer(token)
        self.wallets, self.as_operator = stub("wallet", "operator", wallet_pb2_grpc.WalletServiceStub) or (None, None)
        self.transactions, self.as_gateway = (stub("transaction", "gateway", transaction_pb2_grpc.TransactionServiceStub)
                                              or (None, None))
        self.user_wallets = (stub("wallet", "gateway", wallet_pb2_grpc.WalletServiceStub) or (None,))[0]
        self._providers = stub("provider", "operator", provider_pb2_grpc.ProviderServiceStub)
        self._chains = stub("blockchain", "operator", blockchain_pb2_grpc.BlockchainServiceStub)
        self._compliance = stub("compliance", "operator", compliance_pb2_grpc.ComplianceServiceStub)

    async def compliance(self, method: str, request):
        stub, metadata = self._compliance
        return await getattr(stub, method)(request, metadata=metadata, timeout=10)

    async def review(self, screening: str, approve: bool, request_id: str) -> compliance_pb2.Screening:
        """An operator's review of a held screening."""
        decision = compliance_pb2.DECISION_APPROVED if approve else compliance_pb2.DECISION_REJECTED
        return (await self.compliance("ReviewScreening", compliance_pb2.ReviewScreeningRequest(
            name=screening, decision=decision, reason="checked by the test", request_id=request_id))).screening

    def as_user(self, user: str, *roles: str):
        """Metadata of the gateway calling for `user` (a plain user unless roles are given)."""
        return bearer(user_token(self.topology, user, roles or ("user",)))

    async def provider(self, method: str, request):
        stub, metadata = self._providers
        return await getattr(stub, method)(request, metadata=metadata, timeout=10)

    async def chain(self, method: str, request):
        stub, metadata = self._chains
        return await getattr(stub, method)(request, metadata=metadata, timeout=10)

    async def wallet(self, owner: str, funds: str) -> str:
        name = (await self.wallets.CreateWallet(wallet_pb2.CreateWalletRequest(
            wallet=wallet_pb2.Wallet(owner_id=owner, currency_code="USD"), request_id=f"w-{owner}"),
            metadata=self.as_operator, timeout=10)).wallet.name
        if funds != "0":
            await self.wallets.CreditWallet(wallet_pb2.CreditWalletRequest(
                wallet=name, amount=usd(funds), request_id=f"fund-{owner}"), metadata=self.as_operator, timeout=10)
        return name

    async def balances(self, name: str) -> tuple[Decimal, Decimal]:
        w = (await self.wallets.GetWallet(wallet_pb2.GetWalletRequest(name=name), metadata=self.as_operator,
                                          timeout=10)).wallet
        return Decimal(w.available_balance.amount), Decimal(w.held_balance.amount)

    async def create(self, kind: str, amount: str, request_id: str, **fields) -> transaction_pb2.Transaction:
        return (await self.transactions.CreateTransaction(transaction_pb2.CreateTransactionRequest(
            transaction=transaction_pb2.Transaction(type=transaction_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{kind}"),
                                                    amount=usd(amount), **fields), request_id=request_id),
            metadata=self.as_gateway, timeout=10)).transaction

    async def send(self, source: str, destination: str, amount: str, request_id: str):
        return await self.create("SEND", amount, request_id, source_wallet=source, destination_wallet=destination)

    async def settled(self, name: str, timeout: float = 30) -> transaction_pb2.Transaction:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            tx = (await self.transactions.GetTransaction(transaction_pb2.GetTransactionRequest(name=name),
                                                         metadata=self.as_gateway, timeout=10)).transaction
            if tx.state in SETTLED or asyncio.get_running_loop().time() > deadline:
                return tx
            await asyncio.sleep(0.05)

    async def wait_until_settled(self, names: list[str], timeout: float = 60) -> None:
        """Until no money is held any more: every finished transaction settled by the wallet."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            held = [(await self.balances(n))[1] for n in names]
            if not any(held) or asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.1)

    async def wait_until(self, read, expected, timeout: float = 30):
        """Poll `await read()` until it equals `expected` (or time runs out); the last value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (value := await read()) != expected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return value

    def provider_books(self, provider: str) -> list[dict]:
        """A simulated provider's own record of its charges (outside our databases)."""
        path = self.topology.state_dir / "simulators" / "providers" / f"{provider}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def start_mesh(topology, start_server, services=ORDER, *, one_process: bool = False, **databases) -> Mesh:
    """Start `services` (in dependency order) with their real apps; `databases` overrides URLs.
    `one_process`: as the monolith runs them, calling each other directly (each still serves gRPC)."""
    ports = {}
    neighbours = {} if one_process else None
    for name in ORDER:
        if name not in services:
            continue
        if name in databases:
            topology = with_service(topology, name, database=databases[name])
        build = import_module(f"services.{name}.app").build
        server = await start_server(topology, name, build, neighbours=neighbours)
        topology = with_service(topology, name, address=Address("127.0.0.1", server.port))
        ports[name] = server.port
    return Mesh(topology, ports)


# --- the services as real processes ---------------------------------------------------------------

class Process:
    """One process of the mesh (`python -m services <name>`, or `python -m gateway`), its output in
    <log_dir>/<name>.log."""

    def __init__(self, name: str, env: dict, log_dir):
        self.name, self.env, self.log_dir, self.process = name, env, log_dir, None

    def start(self) -> None:
        log = open(self.log_dir / f"{self.name}.log", "ab")
        # Tied to this process (from the thread that runs the tests): a killed pytest leaves none behind.
        self.process = subprocess.Popen(tied_to_parent(entry_command(self.name)), env=self.env,
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


@contextlib.asynccontextmanager
async def running(processes, topology, serving=None, timeout: float = 30):
    """Start `processes` and wait until the services named in `serving` (default: all of them)
    are SERVING; stop every process on the way out, also when starting or waiting failed."""
    try:
        for process in processes:
            process.start()
        for name in serving if serving is not None else [p.name for p in processes]:
            await wait_serving(topology, name, timeout)
        yield
    finally:
        for process in reversed(processes):
            process.stop()


# The shapes every end-to-end fixture runs in: each service a process, and the monolith.
SHAPES = ("services", "monolith")
ALL_SHAPES = (*SHAPES, "hybrid")


@contextlib.asynccontextmanager
async def mesh_processes(pki, state_dir, mode: str = "services", services=ORDER, **overrides):
    """The processes of `mode`'s shape that serve `services` (a process serves all its members),
    started and SERVING: yields (topology, {process name: Process}); stops them on the way out."""
    env = process_env(pki, state_dir, DIBOAS_MODE=mode, **overrides)
    topology = load_topology(env={k: v for k, v in env.items() if k.startswith("DIBOAS_")})
    processes = {name: Process(name, env, state_dir) for name, members in topology.processes.items()
                 if set(members) & set(services)}
    serving = [member for name in processes for member in topology.processes[name]]
    async with running(list(processes.values()), topology, serving):
        yield topology, processes


def process_env(pki, state_dir, **overrides) -> dict:
    """The environment of a whole mesh of processes: free ports, the test PKI, quick shutdown, and
    a killed process's sagas taken over after 5 s instead of 30."""
    env = dict(os.environ, DIBOAS_CERTS_DIR=str(pki), DIBOAS_STATE_DIR=str(state_dir), DIBOAS_UNREADY_SECONDS="0",
               DIBOAS_DRAIN_SECONDS="2", DIBOAS_TRACING="off", DIBOAS_QUEUE_LEASE="5")
    env.update(mesh_addresses(ORDER))
    env.update(overrides)
    return env


def refused_start(pki, state_dir, service: str, **overrides) -> str:
    """Start `python -m services.<service>` with these settings, expect it to refuse (exit 2,
    no traceback) and return what it wrote on stderr."""
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], env=process_env(pki, state_dir, **overrides),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped: its parent is gone, init reaps it soon) counts as stopped.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def wait_serving(topology, name: str, timeout: float = 30) -> None:
    service = topology.services[name]
    deadline = asyncio.get_running_loop().time() + timeout
    async with client_channel(topology, "operator", service.address.port, name) as channel:
        while True:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert asyncio.get_running_loop().time() < deadline, f"{name} did not start"
            await asyncio.sleep(0.1)


# --- money through crashes: a client of the processes that retries through outages ------------------

class MoneyClient:
    """The wallet (as the operator) and the transaction service (as the gateway, for an operator-role
    user) of a mesh of processes, calling through outages: for tests that crash services under load
    and then check that no money was created, lost, frozen or settled twice."""

    def __init__(self, topology):
        self.topology = topology
        self.wallet_channel = client_channel(topology, "operator", topology.services["wallet"].address.port, "wallet")
        self.tx_channel = client_channel(topology, "gateway", topology.services["transaction"].address.port,
                                         "transaction")
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self.wallet_channel)
        self.transactions = transaction_pb2_grpc.TransactionServiceStub(self.tx_channel)
        self.compliance_channel = client_channel(topology, "operator", topology.services["compliance"].address.port,
                                                 "compliance")
        self.compliance = compliance_pb2_grpc.ComplianceServiceStub(self.compliance_channel)
        self.as_operator = bearer(service_token(topology, "operator", "wallet"))
        self.as_compliance_operator = bearer(service_token(topology, "operator", "compliance"))
        self.as_gateway = bearer(user_token(topology))
        self.answered = 0           # SENDs of `sends` answered so far (accepted or refused)

    async def close(self):
        await self.wallet_channel.close()
        await self.tx_channel.close()
        await self.compliance_channel.close()

    async def call(self, fn, request, metadata, attempts: int = 200):
        """Retry through outages (the test's own client; the mesh's clients have their own policies)."""
        for _ in range(attempts):
            try:
                return await fn(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      grpc.StatusCode.RESOURCE_EXHAUSTED):        # sent again, as asked
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("service never came back")

    async def funded_wallets(self, count: int, funds: str, first_owner: str = "o0") -> list[str]:
        """`count` USD wallets with `funds` each, of owners o0, o1, ... (the first: `first_owner`)."""
        names = []
        for i in range(count):
            owner = first_owner if i == 0 else f"o{i}"
            reply = await self.call(self.wallets.CreateWallet, wallet_pb2.CreateWalletRequest(
                wallet=wallet_pb2.Wallet(owner_id=owner, currency_code="USD"), request_id=f"w{i}"), self.as_operator)
            names.append(reply.wallet.name)
            await self.call(self.wallets.CreditWallet, wallet_pb2.CreditWalletRequest(
                wallet=reply.wallet.name, amount=usd(funds), request_id=f"f{i}"), self.as_operator)
        return names

    def sends(self, names: list[str], count: int, seed: int, prefix: str = "s", concurrency: int = 32):
        """A burst of `count` concurrent SENDs among `names` (a future): each retried by its request_id
        through outages, so at most one transaction per request; not enough money is fine."""
        rng, gate = random.Random(seed), asyncio.Semaphore(concurrency)

        async def send(n: int) -> None:
            source, destination = rng.sample(names, 2)
            request = transaction_pb2.CreateTransactionRequest(request_id=f"{prefix}{n}", transaction=transaction_pb2.Transaction(
                type=transaction_pb2.TRANSACTION_TYPE_SEND, source_wallet=source, destination_wallet=destination,
                amount=usd(f"{rng.randint(1, 3000) / 100:.2f}")))
            async with gate:
                try:
                    await self.call(self.transactions.CreateTransaction, request, self.as_gateway)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()   # not enough money
                self.answered += 1
        burst = asyncio.ensure_future(asyncio.gather(*(send(n) for n in range(count))))
        burst.answered_before = self.answered
        return burst

    async def under_way(self, burst: asyncio.Future, answered: int, timeout: float = 120) -> None:
        """Return once `answered` SENDs of `burst` (made by `sends`) have been answered: the moment
        to disrupt it, as far into it on a fast machine as on a slow one. Fails if the burst ended
        first (it is too short to be disrupted)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.answered < burst.answered_before + answered and not burst.done():
            assert asyncio.get_running_loop().time() < deadline, f"fewer than {answered} SENDs answered in {timeout}s"
            await asyncio.sleep(0.01)
        assert not burst.done(), "the burst ended before the disruption: make it longer"

    async def balances(self, names):
        out = []
        for name in names:
            w = (await self.call(self.wallets.GetWallet, wallet_pb2.GetWalletRequest(name=name), self.as_operator)).wallet
            out.append((Decimal(w.available_balance.amount), Decimal(w.held_balance.amount)))
        return out

    def evidence(self, pending: list[str]) -> str:
        """What a test that found transactions stuck adds to its failure: their work items, and the
        warnings and errors the processes logged (none here; a mesh of processes says more)."""
        return ""

    async def all_transactions(self):
        found, token = [], ""
        while True:
            page = await self.call(self.transactions.ListTransactions,
                                   transaction_pb2.ListTransactionsRequest(page_size=500, page_token=token),
                                   self.as_gateway)
            found += page.transactions
            if not (token := page.next_page_token):
                return found

    async def screenings(self) -> dict[str, int]:
        """The compliance service's decision now on each transaction it screened, by transaction name."""
        found, token = {}, ""
        while True:
            page = await self.call(self.compliance.ListScreenings,
                                   compliance_pb2.ListScreeningsRequest(page_size=500, page_token=token),
                                   self.as_compliance_operator)
            found.update({s.transaction: s.decision for s in page.screenings})
            if not (token := page.next_page_token):
                return found

    async def assert_conserved(self, names: list[str], total: Decimal, most: int, timeout: float = 240) -> list:
        """Once every transaction is COMPLETED or FAILED and nothing is held (within `timeout`): at most
        `most` transactions, the sum of the balances is `total`, none is negative, each completed one
        was screened and approved (by the compliance service's own record) and captured its hold
        once, for its destination. The transactions."""
        deadline, previous = asyncio.get_running_loop().time() + timeout, None
        while True:
            txs = await self.all_transactions()
            balances = await self.balances(names)
            pending = [t for t in txs if t.state not in SETTLED]
            # The wallets are read one by one: a capture committed mid-read shows its source settled
            # and its destination not yet credited. Only two equal reads in a row are a snapshot.
            if not pending and not any(held for _, held in balances) and balances == previous:
                break
            assert asyncio.get_running_loop().time() < deadline, (
                f"{len(pending)} pending: {[(t.name, transaction_pb2.TransactionState.Name(t.state)) for t in pending[:10]]}, "
                f"still held: {[held for _, held in balances if held]}{self.evidence([t.name for t in pending[:10]])}")
            previous = balances
            await asyncio.sleep(0.5)
        assert len({t.name for t in txs}) == len(txs) <= most
        assert sum(available for available, _ in balances) == total, \
            f"the balances add up to {sum(available for available, _ in balances)}, not {total}"   # nothing created or lost
        assert all(available >= 0 for available, _ in balances)
        screened = await self.screenings()
        completed = [tx for tx in txs if tx.state == transaction_pb2.TRANSACTION_STATE_COMPLETED]
        for tx in completed:
            assert (screened.get(tx.name), tx.compliance.decision) == (
                compliance_pb2.DECISION_APPROVED, transaction_pb2.COMPLIANCE_DECISION_APPROVED), \
                f"{tx.name} completed, screened {screened.get(tx.name)}, shown {tx.compliance}"
        gate = asyncio.Semaphore(16)

        async def hold_of(tx):
            async with gate:
                return (await self.call(self.wallets.GetHold, wallet_pb2.GetHoldRequest(name=tx.hold),
                                        self.as_operator)).hold
        holds = await asyncio.gather(*(hold_of(tx) for tx in completed))
        for tx, hold in zip(completed, holds, strict=True):                   # each completed one settled once
            assert (hold.state, hold.destination_wallet) == (wallet_pb2.HOLD_STATE_CAPTURED, tx.destination_wallet), \
                f"{tx.name} completed, its hold {hold}"
        return txs
