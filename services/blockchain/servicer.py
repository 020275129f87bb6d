"""BlockchainService over gRPC: requests to domain values (every problem names its field), the
registry's and the coordinator's answers to responses. No rules of its own."""
from __future__ import annotations

import time

from diboas.blockchain.v1 import blockchain_pb2, blockchain_pb2_grpc
from diboas.common.v1 import common_pb2
from services.domain.errors import InvalidArgument
from services.runtime.context import current_deadline
from services.runtime.requests import KEY, PageTokens, fingerprint, money, page_size, request_id, resource_id
from services.runtime.wire import duration, money_pb, timestamp
from services.simulation import fault_settings, faults_of

from .coordinator import TransferCoordinator
from .registry import ChainRegistry, StatusReport
from .simulator import Faults
from .transfers import STEPS, ChainTx, Transfer

_MARGIN = 0.25                     # seconds kept from the caller's deadline to answer in time


def _step_pb(step: str) -> int:
    return blockchain_pb2.TransferStep.Value(f"TRANSFER_STEP_{step}")


def _ref(tx: ChainTx | None) -> common_pb2.ChainTransactionRef | None:
    if tx is None:
        return None
    return common_pb2.ChainTransactionRef(chain=f"chains/{tx.chain}", transaction_hash=tx.hash, block_number=tx.block)


def transfer_pb(t: Transfer) -> blockchain_pb2.CrossChainTransfer:
    return blockchain_pb2.CrossChainTransfer(
        name=t.name, source_chain=f"chains/{t.source_chain}", target_chain=f"chains/{t.target_chain}",
        amount=money_pb(t.amount),
        destination_address=t.destination_address, transaction=t.transaction,
        state=blockchain_pb2.CrossChainTransferState.Value(f"CROSS_CHAIN_TRANSFER_STATE_{t.state}"),
        current_step=_step_pb(t.current_step), source_transaction=_ref(t.source_tx),
        bridge_transaction=_ref(t.bridge_tx), target_transaction=_ref(t.target_tx),
        compensations=[blockchain_pb2.Compensation(step=_step_pb(c.step), transaction=_ref(c.transaction),
                                                   reason=c.reason, create_time=timestamp(c.created_at))
                       for c in t.compensations],
        failure_reason=t.failure_reason if t.state in ("COMPENSATED", "FAILED") else "",
        create_time=timestamp(t.created_at), update_time=timestamp(t.updated_at),
        complete_time=timestamp(t.completed_at))


def status_pb(report: StatusReport) -> blockchain_pb2.GetTransactionStatusResponse:
    def status(value: str) -> int:
        return blockchain_pb2.ChainTransactionStatus.Value(f"CHAIN_TRANSACTION_STATUS_{value}")
    return blockchain_pb2.GetTransactionStatusResponse(
        transaction_hash=report.transaction_hash, status=status(report.status),
        chain=f"chains/{report.chain}" if report.chain else "", confirmations=report.confirmations,
        required_confirmations=report.required_confirmations, finalized=report.finalized, partial=report.partial,
        chain_results=[blockchain_pb2.ChainStatusResult(
            chain=f"chains/{a.chain}",
            outcome=blockchain_pb2.CHAIN_QUERY_OUTCOME_OK if a.answered else blockchain_pb2.CHAIN_QUERY_OUTCOME_UNAVAILABLE,
            error=a.error, found=a.status.found, status=status(a.status.status if a.answered else "UNKNOWN"),
            block_number=a.status.block_number, confirmations=a.status.confirmations,
            required_confirmations=a.required_confirmations) for a in report.answers])


def faults_from_pb(f: blockchain_pb2.ChainFaults) -> Faults:
    known = {_step_pb(step): step for step in STEPS}
    steps = set()
    for value in f.failing_steps:
        if value not in known:
            raise InvalidArgument.field("faults.failing_steps", "may hold TRANSFER_STEP_SOURCE, TRANSFER_STEP_BRIDGE "
                                        f"and TRANSFER_STEP_TARGET only, got {value}")
        steps.add(known[value])
    return Faults(*fault_settings(f), failing_steps=frozenset(steps))


def faults_pb(faults: Faults) -> blockchain_pb2.ChainFaults:
    return blockchain_pb2.ChainFaults(
        error_rate_percent=round(faults.error_rate * 100), timeout_rate_percent=round(faults.timeout_rate * 100),
        extra_latency=duration(faults.extra_latency), flapping=faults.flap_period > 0,
        flap_period=duration(faults.flap_period) if faults.flap_period > 0 else None,
        failing_steps=[_step_pb(s) for s in STEPS if s in faults.failing_steps])


def _remaining() -> float | None:
    """Seconds left of the call being served (keeping a margin to answer), None when it has no deadline."""
    deadline = current_deadline()
    return None if deadline is None else deadline - time.monotonic() - _MARGIN


PAGES = PageTokens("chains", KEY)        # after this chain name


class BlockchainServicer(blockchain_pb2_grpc.BlockchainServiceServicer):
    def __init__(self, registry: ChainRegistry, coordinator: TransferCoordinator):
        self._registry, self._coordinator = registry, coordinator

    def _chain_pb(self, name: str) -> blockchain_pb2.Chain:
        adapter, health = self._registry.adapter(name), self._registry.health[name]
        return blockchain_pb2.Chain(
            name=f"chains/{name}", display_name=adapter.display_name, native_currency_code=adapter.native_currency,
            required_confirmations=adapter.required_confirmations, block_time=duration(adapter.block_time),
            latest_block_number=health.latest_block,
            health_state=blockchain_pb2.ChainHealthState.Value(f"CHAIN_HEALTH_STATE_{self._registry.state(name)}"),
            faults=faults_pb(faults) if (faults := faults_of(adapter)) is not None else None)

    async def ListChains(self, request, context):
        size = page_size(request.page_size)
        after = PAGES.read(request.page_token)
        names = [n for n in self._registry.names if after is None or n > after[0]]
        page, more = names[:size], len(names) > size
        await self._registry.check_unchecked(page)
        return blockchain_pb2.ListChainsResponse(chains=[self._chain_pb(n) for n in page],
                                                 next_page_token=PAGES.write(page[-1]) if more else "")

    async def GetChain(self, request, context):
        name = resource_id(request.name, "chains", "name")
        self._registry.adapter(name)
        await self._registry.check(name)            # the latest block and health, now
        return blockchain_pb2.GetChainResponse(chain=self._chain_pb(name))

    async def ExecuteCrossChainTransfer(self, request, context):
        rid = request_id(request)
        source = resource_id(request.source_chain, "chains", "source_chain")
        target = resource_id(request.target_chain, "chains", "target_chain")
        amount = money(request.amount, request.HasField("amount"), "amount")
        if request.transaction:
            resource_id(request.transaction, "transactions", "transaction")
        transfer = await self._coordinator.execute(rid, source, target, amount, request.destination_address,
                                                   request.transaction, fingerprint=fingerprint(request),
                                                   wait=_remaining())
        return blockchain_pb2.ExecuteCrossChainTransferResponse(cross_chain_transfer=transfer_pb(transfer))

    async def GetCrossChainTransfer(self, request, context):
        transfer = await self._coordinator.get(resource_id(request.name, "crossChainTransfers", "name"))
        return blockchain_pb2.GetCrossChainTransferResponse(cross_chain_transfer=transfer_pb(transfer))

    async def GetTransactionStatus(self, request, context):
        chains = [resource_id(c, "chains", "chains") for c in request.chains]
        remaining = _remaining()
        timeout = self._registry.call_timeout if remaining is None else max(0.05, min(self._registry.call_timeout, remaining))
        report = await self._registry.transaction_status(request.transaction_hash, chains, timeout)
        return status_pb(report)

    async def SetChainFaults(self, request, context):
        rid = request_id(request)
        name = resource_id(request.chain, "chains", "chain")
        self._registry.adapter(name)
        faults = faults_from_pb(request.faults)
        data = await self._coordinator.set_faults(
            rid, fingerprint(request), name, faults,
            lambda chain: blockchain_pb2.SetChainFaultsResponse(chain=self._chain_pb(chain)).SerializeToString())
        return blockchain_pb2.SetChainFaultsResponse.FromString(data)
