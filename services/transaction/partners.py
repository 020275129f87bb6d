"""The provider, blockchain and compliance services, as the transaction sagas need them: adapters from
domain values to their RPCs (errors arrive as domain errors, through the runtime's guarded
stubs). Each call carries an idempotency key, so a retried step never pays or moves twice."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from diboas.blockchain.v1 import blockchain_pb2, blockchain_pb2_grpc
from diboas.compliance.v1 import compliance_pb2, compliance_pb2_grpc
from diboas.provider.v1 import provider_pb2, provider_pb2_grpc
from services.domain.errors import DeadlineExceeded, ServiceUnavailable
from services.domain.money import Money
from services.runtime.client import Upstream
from services.runtime.coalesce import Coalescer, answers_of
from services.runtime.wire import money_pb

from .domain import Screened, Transaction
from .ports import PaymentResult, ProviderTerms, TransferResult

# Failover across providers, or three chain steps with compensations, take longer than one
# plain call: the saga waits this long before it asks again (with the same key) later. Less
# than the work queue's 30 s lease, so another worker does not take the item meanwhile.
SAGA_STEP_TIMEOUT = 20.0
# How long a transaction's creation waits to learn whether a provider or chain it names exists.
LOOKUP_TIMEOUT = 2.0


async def _looked_up(lookup):
    """Await a Get of a provider or chain: its answer; its NotFound is raised; None when the
    upstream cannot answer now (down, slow), and the saga finds out later."""
    try:
        return await lookup
    except (ServiceUnavailable, DeadlineExceeded):
        return None


def _limits(amounts) -> dict[str, Decimal]:
    """A provider's limits per currency; one that does not read as a number is left out (the
    provider itself still refuses a payment outside it)."""
    limits = {}
    for money in amounts:
        try:
            limits[money.currency_code] = Decimal(money.amount)
        except InvalidOperation:
            continue
    return limits


class ProviderClient:
    def __init__(self, upstream: Upstream):
        self._providers = upstream.stub(provider_pb2_grpc.ProviderServiceStub)

    async def pay(self, pay_in: bool, amount: Money, wallet: str, transaction: str, provider: str,
                  request_id: str) -> PaymentResult:
        direction = provider_pb2.PAYMENT_DIRECTION_PAY_IN if pay_in else provider_pb2.PAYMENT_DIRECTION_PAY_OUT
        reply = await self._providers.ExecutePayment(provider_pb2.ExecutePaymentRequest(
            direction=direction, amount=money_pb(amount), wallet=wallet, provider=provider, transaction=transaction,
            request_id=request_id), timeout=SAGA_STEP_TIMEOUT)
        p = reply.payment
        return PaymentResult(p.name, provider_pb2.PaymentState.Name(p.state).removeprefix("PAYMENT_STATE_"),
                             p.provider, p.failure_reason)

    async def require(self, provider: str) -> ProviderTerms | None:
        reply = await _looked_up(self._providers.GetProvider(provider_pb2.GetProviderRequest(name=provider),
                                                             timeout=LOOKUP_TIMEOUT))
        if reply is None:
            return None
        p = reply.provider
        # A provider service of a release without the limits sends none: none are checked here.
        return ProviderTerms(
            p.name or provider, frozenset(p.supported_currency_codes),
            frozenset(provider_pb2.PaymentDirection.Name(d).removeprefix("PAYMENT_DIRECTION_")
                      for d in p.supported_directions),
            _limits(p.minimum_amounts), _limits(p.maximum_amounts))


class ChainClient:
    def __init__(self, upstream: Upstream):
        self._chains = upstream.stub(blockchain_pb2_grpc.BlockchainServiceStub)

    async def transfer(self, source_chain: str, target_chain: str, amount: Money, destination_address: str,
                       transaction: str, request_id: str) -> TransferResult:
        reply = await self._chains.ExecuteCrossChainTransfer(blockchain_pb2.ExecuteCrossChainTransferRequest(
            source_chain=source_chain, target_chain=target_chain, amount=money_pb(amount),
            destination_address=destination_address, transaction=transaction, request_id=request_id),
            timeout=SAGA_STEP_TIMEOUT)
        t = reply.cross_chain_transfer
        refs = [(r.chain, r.transaction_hash, r.block_number)
                for r in (t.source_transaction, t.bridge_transaction, t.target_transaction) if r.transaction_hash]
        return TransferResult(t.name, blockchain_pb2.CrossChainTransferState.Name(t.state)
                              .removeprefix("CROSS_CHAIN_TRANSFER_STATE_"), refs, t.failure_reason)

    async def require(self, chain: str) -> None:
        await _looked_up(self._chains.GetChain(blockchain_pb2.GetChainRequest(name=chain), timeout=LOOKUP_TIMEOUT))


def _screened(screening: compliance_pb2.Screening) -> Screened:
    """The decision now and the user's reason: never the rule, explanation or findings."""
    decision = compliance_pb2.Decision.Name(screening.decision).removeprefix("DECISION_")
    return Screened(screening.name, decision, screening.reason)


class ComplianceClient:
    """The screenings of concurrent sagas go together in BatchScreenTransactions calls
    (services/runtime/coalesce.py)."""

    def __init__(self, upstream: Upstream, max_batch: int = 100):
        self._compliance, self._upstream = upstream.stub(compliance_pb2_grpc.ComplianceServiceStub), upstream.name
        self._screenings: Coalescer[compliance_pb2.ScreenTransactionRequest, Screened] = Coalescer(
            self._screen_all, upstream.name, "BatchScreenTransactions", max_batch=max_batch)

    async def screen(self, tx: Transaction, request_id: str) -> Screened:
        return await self._screenings(compliance_pb2.ScreenTransactionRequest(
            screening=compliance_pb2.Screening(
                transaction=tx.name, type=compliance_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{tx.type}"),
                user_id=tx.initiator, amount=money_pb(tx.amount), source_owner=tx.source_owner,
                destination_owner=tx.destination_owner, destination_address=tx.destination_address),
            request_id=request_id))

    async def _screen_all(self, requests: list[compliance_pb2.ScreenTransactionRequest]) -> list[Screened | Exception]:
        async def batch(requests: list[compliance_pb2.ScreenTransactionRequest]):
            return (await self._compliance.BatchScreenTransactions(
                compliance_pb2.BatchScreenTransactionsRequest(requests=requests))).outcomes
        answers = await answers_of(batch, self._compliance.ScreenTransaction, requests, self._upstream)
        return [answer if isinstance(answer, BaseException) else _screened(answer.screening) for answer in answers]

    async def decision(self, screening: str) -> Screened:
        reply = await self._compliance.GetScreening(compliance_pb2.GetScreeningRequest(name=screening))
        return _screened(reply.screening)
