"""The blockchain service as a real mTLS server: chains, a cross-chain transfer, a failing step
switched on at run time and compensated, status with a faulted chain, and bad input."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from diboas.blockchain.v1 import blockchain_pb2 as pb
from diboas.blockchain.v1 import blockchain_pb2_grpc
from diboas.common.v1 import common_pb2
from services.blockchain.app import build as blockchain_app

from conftest import operator_calls


@pytest.fixture
async def blockchain(topology, start_server):
    server = await start_server(topology, "blockchain", blockchain_app)
    call, channel = operator_calls(topology, server.port, "blockchain", blockchain_pb2_grpc.BlockchainServiceStub)
    yield call
    await channel.close()


def usdc(amount: str) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USDC", amount=amount)


def transfer_request(request_id: str, source: str = "ethereum", target: str = "solana", amount: str = "10.00",
                     address: str = "0xreceiver") -> pb.ExecuteCrossChainTransferRequest:
    return pb.ExecuteCrossChainTransferRequest(source_chain=f"chains/{source}", target_chain=f"chains/{target}",
                                               amount=usdc(amount), destination_address=address,
                                               transaction="transactions/tx1", request_id=request_id)


async def expect_error(call, method: str, request, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(method, request)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


async def test_chains_are_listed_and_read(blockchain):
    listed = await blockchain("ListChains", pb.ListChainsRequest())
    assert [c.name for c in listed.chains] == ["chains/ethereum", "chains/polygon", "chains/solana"]
    assert not listed.next_page_token
    eth = listed.chains[0]
    assert (eth.display_name, eth.native_currency_code, eth.required_confirmations, eth.block_time.seconds) == (
        "Ethereum (simulated)", "ETH", 12, 2)
    assert eth.latest_block_number > 0 and eth.health_state == pb.CHAIN_HEALTH_STATE_HEALTHY
    first = await blockchain("ListChains", pb.ListChainsRequest(page_size=2))
    rest = await blockchain("ListChains", pb.ListChainsRequest(page_size=2, page_token=first.next_page_token))
    assert [c.name for c in [*first.chains, *rest.chains]] == [c.name for c in listed.chains] and not rest.next_page_token
    polygon = (await blockchain("GetChain", pb.GetChainRequest(name="chains/polygon"))).chain
    assert (polygon.native_currency_code, polygon.required_confirmations, polygon.block_time.nanos) == ("MATIC", 64, 500_000_000)
    details = await expect_error(blockchain, "GetChain", pb.GetChainRequest(name="chains/bitcoin"), grpc.StatusCode.NOT_FOUND)
    assert details == "chain chains/bitcoin does not exist (known: ethereum, polygon, solana)"


async def test_a_transfer_completes_and_a_repeat_returns_it(blockchain):
    done = (await blockchain("ExecuteCrossChainTransfer", transfer_request("x1"))).cross_chain_transfer
    assert done.state == pb.CROSS_CHAIN_TRANSFER_STATE_COMPLETED and done.name.startswith("crossChainTransfers/")
    assert [(r.chain, r.transaction_hash[:2], r.block_number > 0) for r in
            (done.source_transaction, done.bridge_transaction, done.target_transaction)] == [
        ("chains/ethereum", "0x", True), ("chains/ethereum", "0x", True), ("chains/solana", "0x", True)]
    assert (done.amount.amount, done.transaction, done.failure_reason) == ("10.000000", "transactions/tx1", "")
    assert done.HasField("complete_time") and not done.compensations
    again = (await blockchain("ExecuteCrossChainTransfer", transfer_request("x1"))).cross_chain_transfer
    assert again == (await blockchain("GetCrossChainTransfer", pb.GetCrossChainTransferRequest(name=done.name))).cross_chain_transfer
    assert (again.name, again.target_transaction) == (done.name, done.target_transaction)
    await expect_error(blockchain, "ExecuteCrossChainTransfer", transfer_request("x1", amount="11.00"),
                       grpc.StatusCode.ALREADY_EXISTS)
    status = await blockchain("GetTransactionStatus", pb.GetTransactionStatusRequest(
        transaction_hash=done.target_transaction.transaction_hash))
    assert status.chain == "chains/solana" and status.required_confirmations == 32 and not status.partial
    assert status.status in (pb.CHAIN_TRANSACTION_STATUS_PENDING, pb.CHAIN_TRANSACTION_STATUS_CONFIRMING)
    await expect_error(blockchain, "GetCrossChainTransfer", pb.GetCrossChainTransferRequest(name="crossChainTransfers/nope"),
                       grpc.StatusCode.NOT_FOUND)


async def test_a_failing_step_switched_on_at_run_time_is_compensated(blockchain):
    chain = (await blockchain("SetChainFaults", pb.SetChainFaultsRequest(
        chain="chains/solana", faults=pb.ChainFaults(failing_steps=[pb.TRANSFER_STEP_TARGET]), request_id="f1"))).chain
    assert list(chain.faults.failing_steps) == [pb.TRANSFER_STEP_TARGET]
    t = (await blockchain("ExecuteCrossChainTransfer", transfer_request("x2"))).cross_chain_transfer
    assert (t.state, t.current_step) == (pb.CROSS_CHAIN_TRANSFER_STATE_COMPENSATED, pb.TRANSFER_STEP_TARGET)
    assert [c.step for c in t.compensations] == [pb.TRANSFER_STEP_BRIDGE, pb.TRANSFER_STEP_SOURCE]
    assert all(c.transaction.chain == "chains/ethereum" and c.reason == t.failure_reason for c in t.compensations)
    assert t.failure_reason.startswith("TARGET step on chains/solana failed: chains/solana reverted")
    assert t.source_transaction.transaction_hash and t.bridge_transaction.transaction_hash
    assert not t.HasField("target_transaction")
    cleared = (await blockchain("SetChainFaults", pb.SetChainFaultsRequest(chain="chains/solana", request_id="f2"))).chain
    assert not cleared.faults.failing_steps
    repeat = (await blockchain("SetChainFaults", pb.SetChainFaultsRequest(      # the first answer; changes nothing
        chain="chains/solana", faults=pb.ChainFaults(failing_steps=[pb.TRANSFER_STEP_TARGET]), request_id="f1"))).chain
    assert list(repeat.faults.failing_steps) == [pb.TRANSFER_STEP_TARGET]
    await expect_error(blockchain, "SetChainFaults", pb.SetChainFaultsRequest(chain="chains/polygon", request_id="f1"),
                       grpc.StatusCode.ALREADY_EXISTS)
    t = (await blockchain("ExecuteCrossChainTransfer", transfer_request("x3"))).cross_chain_transfer
    assert t.state == pb.CROSS_CHAIN_TRANSFER_STATE_COMPLETED


async def test_status_with_one_chain_faulted_is_partial_not_an_error(blockchain):
    done = (await blockchain("ExecuteCrossChainTransfer", transfer_request("x4"))).cross_chain_transfer
    await blockchain("SetChainFaults", pb.SetChainFaultsRequest(
        chain="chains/polygon", faults=pb.ChainFaults(error_rate_percent=100), request_id="f3"))
    status = await blockchain("GetTransactionStatus", pb.GetTransactionStatusRequest(
        transaction_hash=done.source_transaction.transaction_hash))
    assert (status.chain, status.partial, status.finalized) == ("chains/ethereum", True, False)
    results = {r.chain: r for r in status.chain_results}
    assert results["chains/polygon"].outcome == pb.CHAIN_QUERY_OUTCOME_UNAVAILABLE
    assert results["chains/polygon"].error == "chains/polygon answered with an error"
    assert results["chains/ethereum"].found and results["chains/solana"].outcome == pb.CHAIN_QUERY_OUTCOME_OK
    unknown = await blockchain("GetTransactionStatus", pb.GetTransactionStatusRequest(
        transaction_hash="0x" + "00" * 32, chains=["chains/ethereum", "chains/solana"]))
    assert (unknown.status, unknown.partial, len(unknown.chain_results)) == (pb.CHAIN_TRANSACTION_STATUS_NOT_FOUND, False, 2)
    faulted = (await blockchain("GetChain", pb.GetChainRequest(name="chains/polygon"))).chain
    assert faulted.faults.error_rate_percent == 100 and faulted.health_state == pb.CHAIN_HEALTH_STATE_UNAVAILABLE


@pytest.mark.parametrize("method,request_,field", [
    ("ExecuteCrossChainTransfer", transfer_request(""), "request_id"),
    ("ExecuteCrossChainTransfer", pb.ExecuteCrossChainTransferRequest(
        source_chain="ethereum", target_chain="chains/solana", amount=usdc("1.00"), destination_address="0x1",
        request_id="b1"), "source_chain"),
    ("ExecuteCrossChainTransfer", transfer_request("b2", target="ethereum"), "target_chain"),
    ("ExecuteCrossChainTransfer", transfer_request("b3", amount="0"), "amount.amount"),
    ("ExecuteCrossChainTransfer", transfer_request("b4", amount="1.0000001"), "amount.amount"),
    ("ExecuteCrossChainTransfer", pb.ExecuteCrossChainTransferRequest(
        source_chain="chains/ethereum", target_chain="chains/solana", destination_address="0x1", request_id="b5"), "amount"),
    ("ExecuteCrossChainTransfer", transfer_request("b6", address=""), "destination_address"),
    ("SetChainFaults", pb.SetChainFaultsRequest(chain="chains/solana", faults=pb.ChainFaults(error_rate_percent=150),
                                                request_id="b7"), "faults.error_rate_percent"),
    ("SetChainFaults", pb.SetChainFaultsRequest(chain="chains/solana", faults=pb.ChainFaults(
        flapping=True, flap_period=Duration(seconds=-1)), request_id="b8"), "faults.flap_period"),
    ("SetChainFaults", pb.SetChainFaultsRequest(chain="chains/solana", faults=pb.ChainFaults(
        failing_steps=[pb.TRANSFER_STEP_UNSPECIFIED]), request_id="b9"), "faults.failing_steps"),
    ("SetChainFaults", pb.SetChainFaultsRequest(chain="chains/solana"), "request_id"),
    ("GetTransactionStatus", pb.GetTransactionStatusRequest(), "transaction_hash"),
    ("GetTransactionStatus", pb.GetTransactionStatusRequest(transaction_hash="0x1", chains=["solana"]), "chains"),
    ("ListChains", pb.ListChainsRequest(page_token="garbage"), "page_token"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(blockchain, method, request_, field):
    details = await expect_error(blockchain, method, request_, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith(f"{field}:"), details
    if method == "ExecuteCrossChainTransfer":     # nothing was created: the same key works for a good request
        ok = (await blockchain(method, transfer_request(request_.request_id or "b0"))).cross_chain_transfer
        assert ok.state == pb.CROSS_CHAIN_TRANSFER_STATE_COMPLETED


async def test_unknown_chains_are_not_found(blockchain):
    details = await expect_error(blockchain, "ExecuteCrossChainTransfer", transfer_request("n1", target="bitcoin"),
                                 grpc.StatusCode.NOT_FOUND)
    assert "chains/bitcoin does not exist (known: ethereum, polygon, solana)" in details
    await expect_error(blockchain, "SetChainFaults", pb.SetChainFaultsRequest(chain="chains/bitcoin", request_id="n2"),
                       grpc.StatusCode.NOT_FOUND)
    await expect_error(blockchain, "GetTransactionStatus", pb.GetTransactionStatusRequest(
        transaction_hash="0x1", chains=["chains/bitcoin"]), grpc.StatusCode.NOT_FOUND)
