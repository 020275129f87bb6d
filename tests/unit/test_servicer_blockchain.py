"""BlockchainServicer on a fake chain registry and a fake transfer coordinator: chains paged and
written back with their health and faults, transfers and status reports written back, the
caller's deadline turned into the time the servicer waits, each bad field named, domain errors
passed through."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from diboas.blockchain.v1 import blockchain_pb2
from diboas.common.v1 import common_pb2
from services.blockchain.adapters import TxStatus
from services.blockchain.registry import ChainAnswer, StatusReport
from services.blockchain.servicer import PAGES, BlockchainServicer
from services.blockchain.simulator import Faults
from services.blockchain.transfers import ChainTx, Compensation, Transfer
from services.domain.errors import NotFound
from services.domain.money import Money
from services.simulation import FaultSwitch

from servicing import Recorder, Served

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
ADDRESS = "0x" + "cd" * 20
B = blockchain_pb2


@dataclass
class RealChain:
    """A chain adapter that is not a simulator."""

    display_name: str
    native_currency: str = "ETH"
    required_confirmations: int = 12
    block_time: float = 12.0


@dataclass
class SimulatedChain(RealChain, FaultSwitch):
    faults: Faults = field(default_factory=Faults)


@dataclass
class Health:
    latest_block: int


class FakeChainRegistry(Recorder):
    """The ChainRegistry the servicer reads: adapters, health and state by name; checks and
    status queries are recorded."""

    call_timeout = 1.0

    def __init__(self):
        super().__init__()
        self.adapters = {"arbitrum": RealChain("Arbitrum One"), "ethereum": SimulatedChain("Ethereum"),
                         "polygon": RealChain("Polygon PoS", "POL", 64, 2.0)}
        self.health = {name: Health(100 + i) for i, name in enumerate(sorted(self.adapters))}
        self.report: StatusReport | None = None

    @property
    def names(self):
        return sorted(self.adapters)

    def adapter(self, name):
        if name not in self.adapters:
            raise NotFound(f"chain chains/{name} does not exist", reason="CHAIN_NOT_FOUND")
        return self.adapters[name]

    def state(self, name):
        return "HEALTHY" if name != "polygon" else "DEGRADED"

    async def check_unchecked(self, names=None):
        self.record("check_unchecked", names=list(names))

    async def check(self, name, timeout=None):
        self.record("check", name=name)

    async def transaction_status(self, tx_hash, chains=(), timeout=None):
        self.record("transaction_status", tx_hash=tx_hash, chains=chains, timeout=timeout)
        return self.report


def a_transfer(state: str = "IN_PROGRESS", **changes) -> Transfer:
    return Transfer("x1", "ethereum", "polygon", Money("USDC", Decimal("5")), ADDRESS, "transactions/t1", state,
                    "BRIDGE", NOW, NOW, source_tx=ChainTx("ethereum", "0xaaa", 7), **changes)


class FakeCoordinator(Recorder):
    """The TransferCoordinator methods the servicer calls; `set_faults` switches them on the
    registry's adapter and answers `encode(chain)`, as the real one does."""

    def __init__(self, registry: FakeChainRegistry):
        super().__init__()
        self._registry = registry
        self.transfer = a_transfer()

    async def execute(self, request_id, source_chain, target_chain, amount, destination_address, transaction="", *,
                      fingerprint=None, wait=None):
        self.record("execute", request_id=request_id, source_chain=source_chain, target_chain=target_chain,
                    amount=amount, destination_address=destination_address, transaction=transaction,
                    fingerprint=fingerprint, wait=wait)
        return self.transfer

    async def get(self, transfer_id):
        self.record("get", transfer_id=transfer_id)
        if transfer_id != self.transfer.id:
            raise NotFound(f"cross-chain transfer crossChainTransfers/{transfer_id} does not exist",
                           reason="CROSS_CHAIN_TRANSFER_NOT_FOUND")
        return self.transfer

    async def set_faults(self, request_id, fingerprint, chain, faults, encode):
        self.record("set_faults", request_id=request_id, chain=chain, faults=faults)
        self._registry.adapters[chain].faults = faults
        return encode(chain)


@pytest.fixture
def registry() -> FakeChainRegistry:
    return FakeChainRegistry()


@pytest.fixture
def coordinator(registry) -> FakeCoordinator:
    return FakeCoordinator(registry)


@pytest.fixture
def served(registry, coordinator) -> Served:
    return Served(B.DESCRIPTOR.services_by_name["BlockchainService"], BlockchainServicer(registry, coordinator))


def test_chains_are_paged_by_name_and_each_page_is_checked_first(served, registry):
    first = served.call("ListChains", B.ListChainsRequest(page_size=2))
    assert [c.name for c in first.chains] == ["chains/arbitrum", "chains/ethereum"]
    assert first.next_page_token == PAGES.write("ethereum")
    rest = served.call("ListChains", B.ListChainsRequest(page_size=2, page_token=first.next_page_token))
    assert [c.name for c in rest.chains] == ["chains/polygon"] and rest.next_page_token == ""
    assert [args["names"] for _, args in registry.calls] == [["arbitrum", "ethereum"], ["polygon"]]
    polygon = rest.chains[0]
    assert (polygon.display_name, polygon.native_currency_code, polygon.required_confirmations) == (
        "Polygon PoS", "POL", 64)
    assert (polygon.block_time.seconds, polygon.latest_block_number, polygon.health_state) == (
        2, 102, B.CHAIN_HEALTH_STATE_DEGRADED)
    assert not polygon.HasField("faults")


def test_a_chain_is_checked_now_and_an_unknown_one_is_not_found(served, registry):
    chain = served.call("GetChain", B.GetChainRequest(name="chains/ethereum")).chain
    assert registry.calls == [("check", {"name": "ethereum"})]
    assert chain.health_state == B.CHAIN_HEALTH_STATE_HEALTHY and chain.HasField("faults")
    refused = served.refusal("GetChain", B.GetChainRequest(name="chains/solana"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "CHAIN_NOT_FOUND")


def test_a_transfer_is_asked_for_with_chain_ids_and_waited_for_within_the_callers_deadline(served, coordinator):
    coordinator.transfer = a_transfer("COMPENSATED", failure_reason="target reverted", compensations=[
        Compensation("SOURCE", ChainTx("ethereum", "0xbbb", 9), "target reverted", NOW)])
    reply = served.call("ExecuteCrossChainTransfer", B.ExecuteCrossChainTransferRequest(
        request_id="r-1", source_chain="chains/ethereum", target_chain="chains/polygon",
        amount=common_pb2.Money(currency_code="USDC", amount="5"), destination_address=ADDRESS,
        transaction="transactions/t1"))
    asked = coordinator.last("execute")
    assert (asked["source_chain"], asked["target_chain"], asked["amount"]) == (
        "ethereum", "polygon", Money("USDC", Decimal(5)))
    assert (asked["destination_address"], asked["transaction"]) == (ADDRESS, "transactions/t1")
    assert asked["fingerprint"] and 9 < asked["wait"] < served.timeout - 0.2          # a margin to answer in time
    transfer = reply.cross_chain_transfer
    assert (transfer.name, transfer.source_chain, transfer.state) == (
        "crossChainTransfers/x1", "chains/ethereum", B.CROSS_CHAIN_TRANSFER_STATE_COMPENSATED)
    assert (transfer.source_transaction.chain, transfer.source_transaction.block_number) == ("chains/ethereum", 7)
    assert not transfer.HasField("bridge_transaction") and transfer.failure_reason == "target reverted"
    [compensation] = transfer.compensations
    assert (compensation.step, compensation.transaction.transaction_hash) == (B.TRANSFER_STEP_SOURCE, "0xbbb")


def test_a_transfer_under_way_shows_no_failure_reason_and_an_unknown_one_is_not_found(served, coordinator):
    coordinator.transfer = a_transfer("IN_PROGRESS", failure_reason="bridge timed out, retrying")
    transfer = served.call("GetCrossChainTransfer", B.GetCrossChainTransferRequest(
        name="crossChainTransfers/x1")).cross_chain_transfer
    assert transfer.current_step == B.TRANSFER_STEP_BRIDGE and transfer.failure_reason == ""
    refused = served.refusal("GetCrossChainTransfer", B.GetCrossChainTransferRequest(name="crossChainTransfers/x9"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "CROSS_CHAIN_TRANSFER_NOT_FOUND")


@pytest.mark.parametrize("deadline,longest", [(10.0, 1.0), (0.5, 0.25)])
def test_a_status_query_asks_the_named_chains_within_the_deadline_and_reports_each(served, registry, deadline,
                                                                                   longest):
    served.timeout = deadline
    registry.report = StatusReport("0xaaa", "CONFIRMING", "ethereum", 3, 12, False, [
        ChainAnswer("ethereum", True, "", TxStatus(True, "CONFIRMING", 7, 3), 12),
        ChainAnswer("polygon", False, "no answer in time", TxStatus(False, "NOT_FOUND", 0, 0), 64)], True)
    reply = served.call("GetTransactionStatus", B.GetTransactionStatusRequest(
        transaction_hash="0xaaa", chains=["chains/ethereum", "chains/polygon"]))
    asked = registry.last("transaction_status")
    assert (asked["tx_hash"], asked["chains"]) == ("0xaaa", ["ethereum", "polygon"])
    assert longest - 0.1 < asked["timeout"] <= longest
    assert (reply.status, reply.chain, reply.confirmations, reply.partial) == (
        B.CHAIN_TRANSACTION_STATUS_CONFIRMING, "chains/ethereum", 3, True)
    ethereum, polygon = reply.chain_results
    assert (ethereum.outcome, ethereum.found, ethereum.block_number) == (B.CHAIN_QUERY_OUTCOME_OK, True, 7)
    assert (polygon.outcome, polygon.status, polygon.error) == (
        B.CHAIN_QUERY_OUTCOME_UNAVAILABLE, B.CHAIN_TRANSACTION_STATUS_UNKNOWN, "no answer in time")


def test_faults_with_failing_steps_are_switched_through_the_coordinator(served, coordinator):
    reply = served.call("SetChainFaults", B.SetChainFaultsRequest(
        request_id="r-1", chain="chains/ethereum", faults=B.ChainFaults(
            error_rate_percent=10, flapping=True, failing_steps=[B.TRANSFER_STEP_TARGET, B.TRANSFER_STEP_SOURCE])))
    asked = coordinator.last("set_faults")
    assert (asked["request_id"], asked["chain"]) == ("r-1", "ethereum")
    assert asked["faults"] == Faults(error_rate=0.1, flap_period=5.0, failing_steps=frozenset({"SOURCE", "TARGET"}))
    faults = reply.chain.faults
    assert (faults.error_rate_percent, faults.flapping, faults.flap_period.seconds) == (10, True, 5)
    assert list(faults.failing_steps) == [B.TRANSFER_STEP_SOURCE, B.TRANSFER_STEP_TARGET]


def test_each_bad_field_is_named(served):
    usdc = common_pb2.Money(currency_code="USDC", amount="5")
    transfer = dict(request_id="r", source_chain="chains/ethereum", target_chain="chains/polygon", amount=usdc,
                    destination_address=ADDRESS)

    def execute(**changes) -> tuple[str, B.ExecuteCrossChainTransferRequest]:
        fields = {k: v for k, v in {**transfer, **changes}.items() if v is not None}
        return "ExecuteCrossChainTransfer", B.ExecuteCrossChainTransferRequest(**fields)

    def set_faults(**faults) -> tuple[str, B.SetChainFaultsRequest]:
        return "SetChainFaults", B.SetChainFaultsRequest(request_id="r", chain="chains/ethereum",
                                                         faults=B.ChainFaults(**faults))
    assert served.misnamed({
        "a negative page size": ("ListChains", B.ListChainsRequest(page_size=-3), "page_size"),
        "a page token of another list": ("ListChains", B.ListChainsRequest(page_token="bm90LW91cnM"), "page_token"),
        "a chain name of another collection": ("GetChain", B.GetChainRequest(name="ethereum"), "name"),
        "no request id": (*execute(request_id=""), "request_id"),
        "a source that is no chain": (*execute(source_chain="ethereum"), "source_chain"),
        "a target that is no chain": (*execute(target_chain="wallets/w1"), "target_chain"),
        "no amount": (*execute(amount=None), "amount"),
        "a transaction that is no transaction": (*execute(transaction="t1"), "transaction"),
        "a queried chain that is no chain": ("GetTransactionStatus", B.GetTransactionStatusRequest(
            transaction_hash="0xaaa", chains=["ethereum"]), "chains"),
        "a failing step that is no step": (*set_faults(failing_steps=[B.TRANSFER_STEP_UNSPECIFIED]),
                                           "faults.failing_steps"),
        "a flap period without flapping": (*set_faults(flap_period=Duration(seconds=3)), "faults.flap_period"),
    }) == {}
