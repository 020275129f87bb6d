"""The provider and blockchain integrations with the services as real processes, in each shape
(a process per service over mTLS, and the monolith):
failover mid-payment, the breaker opening and recovering, quotes with a hanging provider, no
provider healthy, a bridge failing at each of its steps, status with a chain down, and the
money invariant across a mixed load of all four transaction types with faults switched on."""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from decimal import Decimal

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from diboas.blockchain.v1 import blockchain_pb2
from diboas.provider.v1 import provider_pb2
from diboas.transaction.v1 import transaction_pb2
from services.runtime.config import INSTANCE_PORT_STEP, load_topology
from tools.ports import mesh_addresses

from meshkit import ORDER, SHAPES, Mesh, Process, mesh_processes, process_env, running, topology_with_a_service, usd

pytestmark = pytest.mark.slow
COMPLETED = transaction_pb2.TRANSACTION_STATE_COMPLETED
FAILED = transaction_pb2.TRANSACTION_STATE_FAILED
PROVIDERS = ("alpha-pay", "beta-ramp", "gamma-exchange")


@pytest.fixture(params=SHAPES)
async def mesh(request, pki, tmp_path):
    async with mesh_processes(pki, tmp_path, request.param, DIBOAS_BREAKER_FAIL_MAX="3",
                              DIBOAS_BREAKER_RESET_TIMEOUT="1") as (topology, _):
        mesh = Mesh(topology, {name: topology.services[name].address.port for name in ORDER})
        yield mesh
        await mesh.close()


async def provider_faults(mesh, provider: str, key: str, **faults) -> None:
    await mesh.provider("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
        provider=f"providers/{provider}", faults=provider_pb2.ProviderFaults(**faults), request_id=key))


async def chain_faults(mesh, chain: str, key: str, **faults) -> None:
    await mesh.chain("SetChainFaults", blockchain_pb2.SetChainFaultsRequest(
        chain=f"chains/{chain}", faults=blockchain_pb2.ChainFaults(**faults), request_id=key))


async def bridge(mesh, wallet: str, amount: str, source: str, target: str) -> transaction_pb2.Transaction:
    """A BRIDGE from `wallet`, once it is COMPLETED or FAILED."""
    return await mesh.settled((await mesh.create(
        "BRIDGE", amount, f"bridge-{source}-{target}", source_wallet=wallet, source_chain=f"chains/{source}",
        target_chain=f"chains/{target}", destination_address="0x00000000000000000000000000000000000000aa")).name)


async def health(mesh, provider: str) -> provider_pb2.ProviderHealth:
    return (await mesh.provider("GetProviderHealth", provider_pb2.GetProviderHealthRequest(
        provider=f"providers/{provider}"))).health


async def test_failover_mid_payment_completes_once_on_the_backup(mesh):
    alice = await mesh.wallet("alice", "0")
    cheapest = (await mesh.provider("SelectProvider", provider_pb2.SelectProviderRequest(
        direction=provider_pb2.PAYMENT_DIRECTION_PAY_IN, amount=usd("250.00"), request_id="s"))).provider
    await provider_faults(mesh, cheapest.removeprefix("providers/"), "f", error_rate_percent=100)
    tx = await mesh.settled((await mesh.create("DEPOSIT", "250.00", "d", destination_wallet=alice,
                                               provider=cheapest)).name)
    assert tx.state == COMPLETED and tx.provider not in ("", cheapest)
    payment = (await mesh.provider("GetPayment", provider_pb2.GetPaymentRequest(name=tx.provider_payment))).payment
    assert [(a.provider, a.succeeded) for a in payment.attempts] == [(cheapest, False), (tx.provider, True)]
    books = {p: mesh.provider_books(p) for p in PROVIDERS}
    assert [c["key"] for c in books[tx.provider.removeprefix("providers/")]] == [payment.name]
    assert sum(len(b) for b in books.values()) == 1                       # charged once, on the backup
    assert await mesh.wait_until(lambda: mesh.balances(alice), (Decimal("250.00"), 0)) == (Decimal("250.00"), 0)


async def test_the_breaker_opens_on_failures_and_recovers_when_the_provider_does(mesh):
    await provider_faults(mesh, "beta-ramp", "f1", error_rate_percent=100)
    for _ in range(3):
        assert (await health(mesh, "beta-ramp")).state == provider_pb2.PROVIDER_HEALTH_STATE_UNHEALTHY
    opened = await health(mesh, "beta-ramp")
    assert opened.circuit_state == provider_pb2.CIRCUIT_STATE_OPEN and "circuit breaker open" in opened.message
    await provider_faults(mesh, "beta-ramp", "f2")                        # the provider recovers
    await asyncio.sleep(1.1)                                              # the reset timeout
    recovered = await health(mesh, "beta-ramp")                           # the trial call
    assert recovered.state == provider_pb2.PROVIDER_HEALTH_STATE_HEALTHY
    assert recovered.circuit_state == provider_pb2.CIRCUIT_STATE_CLOSED


async def test_quotes_with_a_hanging_provider_return_within_the_timeout(mesh):
    await provider_faults(mesh, "alpha-pay", "f", timeout_rate_percent=100)
    started = time.monotonic()
    reply = await mesh.provider("GetQuotes", provider_pb2.GetQuotesRequest(
        direction=provider_pb2.PAYMENT_DIRECTION_PAY_OUT, amount=usd("100.00"),
        provider_timeout=Duration(nanos=400_000_000)))
    assert time.monotonic() - started < 1.0 and reply.partial
    assert {q.provider for q in reply.quotes} == {"providers/beta-ramp", "providers/gamma-exchange"}
    assert [(f.provider, f.kind) for f in reply.failures] == [("providers/alpha-pay",
                                                                provider_pb2.PROVIDER_FAILURE_KIND_TIMEOUT)]


async def test_no_healthy_provider_is_a_clear_unavailable_and_no_money_moves(mesh):
    alice = await mesh.wallet("alice", "100.00")
    for p in PROVIDERS:
        await provider_faults(mesh, p, f"f-{p}", error_rate_percent=100)
        await health(mesh, p)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.provider("ExecutePayment", provider_pb2.ExecutePaymentRequest(
            direction=provider_pb2.PAYMENT_DIRECTION_PAY_OUT, amount=usd("50.00"), wallet=alice, request_id="p"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "no healthy provider" in caught.value.details()
    tx = await mesh.settled((await mesh.create("WITHDRAW", "50.00", "w", source_wallet=alice)).name)
    assert tx.state == FAILED and "no healthy provider" in tx.failure_reason
    await mesh.wait_until_settled([alice])
    assert await mesh.balances(alice) == (Decimal("100.00"), 0)
    assert all(mesh.provider_books(p) == [] for p in PROVIDERS)


@pytest.mark.parametrize("step,chain", [("SOURCE", "ethereum"), ("BRIDGE", "ethereum"), ("TARGET", "polygon")])
async def test_a_bridge_failing_at_each_step_leaves_the_balances_exactly_as_before(mesh, step, chain):
    alice = await mesh.wallet("alice", "80.00")
    await chain_faults(mesh, chain, "f", failing_steps=[blockchain_pb2.TransferStep.Value(f"TRANSFER_STEP_{step}")])
    tx = await bridge(mesh, alice, "30.00", "ethereum", "polygon")
    assert tx.state == FAILED and "compensated" in tx.failure_reason and tx.cross_chain_transfer
    transfer = (await mesh.chain("GetCrossChainTransfer", blockchain_pb2.GetCrossChainTransferRequest(
        name=tx.cross_chain_transfer))).cross_chain_transfer
    assert transfer.state == blockchain_pb2.CROSS_CHAIN_TRANSFER_STATE_COMPENSATED
    undone = {"SOURCE": [], "BRIDGE": ["TRANSFER_STEP_SOURCE"],
              "TARGET": ["TRANSFER_STEP_BRIDGE", "TRANSFER_STEP_SOURCE"]}[step]
    assert [blockchain_pb2.TransferStep.Name(c.step) for c in transfer.compensations] == undone
    await mesh.wait_until_settled([alice])
    assert await mesh.balances(alice) == (Decimal("80.00"), 0)


async def test_a_bridge_completes_with_three_chain_transactions(mesh):
    alice = await mesh.wallet("alice", "80.00")
    tx = await bridge(mesh, alice, "30.00", "solana", "ethereum")
    assert tx.state == COMPLETED
    assert [r.chain for r in tx.chain_transactions] == ["chains/solana", "chains/solana", "chains/ethereum"]
    status = (await mesh.chain("GetTransactionStatus", blockchain_pb2.GetTransactionStatusRequest(
        transaction_hash=tx.chain_transactions[2].transaction_hash))).status
    assert status != blockchain_pb2.CHAIN_TRANSACTION_STATUS_NOT_FOUND
    await mesh.wait_until_settled([alice])
    assert await mesh.balances(alice) == (Decimal("50.00"), 0)


async def test_status_with_one_chain_down_is_partial_not_an_error(mesh):
    alice = await mesh.wallet("alice", "10.00")
    tx = await bridge(mesh, alice, "1.00", "ethereum", "polygon")
    source_hash = tx.chain_transactions[0].transaction_hash
    await chain_faults(mesh, "solana", "down", error_rate_percent=100)
    reply = await mesh.chain("GetTransactionStatus", blockchain_pb2.GetTransactionStatusRequest(
        transaction_hash=source_hash))
    assert reply.partial and reply.chain == "chains/ethereum"       # found where it is, though solana is down
    assert reply.status in (blockchain_pb2.CHAIN_TRANSACTION_STATUS_PENDING,
                            blockchain_pb2.CHAIN_TRANSACTION_STATUS_CONFIRMING)   # 12 blocks of 2 s to finality
    assert not reply.finalized and reply.required_confirmations == 12
    outcomes = {r.chain: r.outcome for r in reply.chain_results}
    assert outcomes["chains/solana"] == blockchain_pb2.CHAIN_QUERY_OUTCOME_UNAVAILABLE
    assert outcomes["chains/ethereum"] == blockchain_pb2.CHAIN_QUERY_OUTCOME_OK


async def test_the_money_invariant_holds_across_a_mixed_load_with_faults(mesh):
    """200 transactions of all four types among 10 wallets, with providers and chains failing
    some of the time: in the end every transaction is settled, nothing is held, and the wallets
    hold exactly what they started with, plus completed deposits, minus completed withdrawals
    and bridges; each provider charged each payment once, and only the completed ones."""
    names = [await mesh.wallet(f"w{i}", "500.00") for i in range(10)]
    for p in PROVIDERS:
        await provider_faults(mesh, p, f"f-{p}", error_rate_percent=25)
    await chain_faults(mesh, "polygon", "f-polygon", error_rate_percent=20)
    await chain_faults(mesh, "solana", "f-solana", failing_steps=[blockchain_pb2.TRANSFER_STEP_TARGET])
    rng = random.Random(7)
    chains = ["chains/ethereum", "chains/polygon", "chains/solana"]

    def request(n: int) -> tuple[str, dict]:
        kind = rng.choice(["SEND", "SEND", "DEPOSIT", "WITHDRAW", "BRIDGE"])
        source, destination = rng.sample(names, 2)
        fields = {"SEND": dict(source_wallet=source, destination_wallet=destination),
                  "DEPOSIT": dict(destination_wallet=destination),
                  "WITHDRAW": dict(source_wallet=source),
                  "BRIDGE": dict(source_wallet=source, source_chain=(pair := rng.sample(chains, 2))[0],
                                 target_chain=pair[1], destination_address=f"0x{n:040x}")}[kind]
        return kind, fields

    gate = asyncio.Semaphore(16)

    async def one(n: int):
        kind, fields = request(n)
        async with gate:
            try:
                return await mesh.create(kind, f"{rng.randint(5000, 9000) / 100:.2f}", f"m{n}", **fields)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()    # not enough money
                return None

    created = [t for t in await asyncio.gather(*(one(n) for n in range(200))) if t]
    final = [await mesh.settled(t.name, timeout=120) for t in created]
    assert all(t.state in (COMPLETED, FAILED) for t in final), Counter(t.state for t in final)
    kinds = Counter((transaction_pb2.TransactionType.Name(t.type), t.state) for t in final)
    assert all(kinds[(k, COMPLETED)] for k in ("TRANSACTION_TYPE_" + k for k in ("SEND", "DEPOSIT", "WITHDRAW",
                                                                                "BRIDGE"))), kinds
    assert kinds[("TRANSACTION_TYPE_BRIDGE", FAILED)], kinds               # solana's failing target did bite
    await mesh.wait_until_settled(names, timeout=120)

    def total(kind: str) -> Decimal:
        return sum((Decimal(t.amount.amount) for t in final
                    if t.type == transaction_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{kind}")
                    and t.state == COMPLETED), Decimal(0))
    expected = Decimal("5000.00") + total("DEPOSIT") - total("WITHDRAW") - total("BRIDGE")

    async def all_balances():
        return [await mesh.balances(n) for n in names]

    async def summed():      # deposits are credited when their event arrives: allow it the time
        return sum(available for available, _ in await all_balances())
    assert await mesh.wait_until(summed, expected, timeout=60) == expected
    assert all(held == 0 and available >= 0 for available, held in await all_balances())
    # The providers' own books: one charge per completed payment, none for the rest.
    charged = [c for p in PROVIDERS for c in mesh.provider_books(p)]
    assert len({c["key"] for c in charged}) == len(charged)
    paid = {t.provider_payment: t for t in final if t.state == COMPLETED and t.provider_payment}
    assert {c["key"] for c in charged} == set(paid)
    for c in charged:
        direction = "PAY_IN" if paid[c["key"]].type == transaction_pb2.TRANSACTION_TYPE_DEPOSIT else "PAY_OUT"
        assert (c["direction"], c["amount"]) == (direction, paid[c["key"]].amount.amount)
    # The chains: every completed bridge has its three on-chain transactions, every failed one
    # was compensated (nothing left locked, nothing minted).
    for t in final:
        if t.type != transaction_pb2.TRANSACTION_TYPE_BRIDGE:
            continue
        transfer = (await mesh.chain("GetCrossChainTransfer", blockchain_pb2.GetCrossChainTransferRequest(
            name=t.cross_chain_transfer))).cross_chain_transfer if t.cross_chain_transfer else None
        if t.state == COMPLETED:
            assert transfer.state == blockchain_pb2.CROSS_CHAIN_TRANSFER_STATE_COMPLETED and len(t.chain_transactions) == 3
        elif transfer is not None:
            assert transfer.state == blockchain_pb2.CROSS_CHAIN_TRANSFER_STATE_COMPENSATED


async def test_a_mesh_that_fails_to_start_leaves_no_process_behind(pki, tmp_path):
    """A fixture whose start fails (here: a service that never answers) still stops what it started."""
    env = process_env(pki, tmp_path)
    topology = load_topology(env={k: v for k, v in env.items() if k.startswith("DIBOAS_")})
    wallet = Process("wallet", env, tmp_path)
    with pytest.raises(AssertionError, match="transaction did not start"):
        async with running([wallet], topology, serving=["transaction"], timeout=2):
            pytest.fail("the mesh cannot be up: the transaction service was never started")
    assert wallet.process.poll() is not None, "the wallet process was left running"


def test_every_listener_of_a_mesh_gets_its_own_port(tmp_path, monkeypatch):
    addresses = mesh_addresses()
    assert len(addresses) == len(load_topology(env={}).services) * 2 + 3
    assert len(set(addresses.values())) == len(addresses)
    # A service added to the topology gets its ports too, not its usual ones (other meshes' too).
    monkeypatch.setenv("DIBOAS_TOPOLOGY", str(topology_with_a_service(tmp_path, "extra")))
    grown = mesh_addresses()
    assert {"DIBOAS_EXTRA_ADDRESS", "DIBOAS_EXTRA_METRICS"} <= set(grown) and len(grown) == len(addresses) + 2
    assert len(set(grown.values())) == len(grown)


def test_the_ports_of_every_instance_are_free_and_distinct():
    ports = [int(a.rpartition(":")[2]) for a in mesh_addresses(gateway=False, instances=3).values()]
    every = [port + INSTANCE_PORT_STEP * k for port in ports for k in range(3)]
    assert len(set(every)) == len(every) and max(every) <= 65535
    topology = load_topology(env={**mesh_addresses(gateway=False, instances=3), "DIBOAS_INSTANCES": "3"})
    assert all(s.instances == 3 for s in topology.services.values())      # the topology's own check passed
