"""TransactionService over gRPC: requests to domain values, named errors by field, responses."""
from __future__ import annotations

import contextlib

from diboas.common.v1 import common_pb2
from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from services.runtime.context import current_user
from services.runtime.requests import fingerprint, money, request_id, resource_id
from services.runtime.wire import money_pb, timestamp

from .domain import EXEMPT, Transaction
from .sagas.saga import FIELDS
from .service import TransactionService


def transaction_pb(tx: Transaction) -> transaction_pb2.Transaction:
    return transaction_pb2.Transaction(
        name=tx.name, type=transaction_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{tx.type}"),
        state=transaction_pb2.TransactionState.Value(f"TRANSACTION_STATE_{tx.state}"),
        source_wallet=tx.source_wallet, destination_wallet=tx.destination_wallet,
        amount=money_pb(tx.amount),
        failure_reason=tx.failure_reason, hold=tx.hold, create_time=timestamp(tx.created_at),
        update_time=timestamp(tx.updated_at), complete_time=timestamp(tx.completed_at), provider=tx.provider,
        provider_payment=tx.provider_payment, source_chain=tx.source_chain, target_chain=tx.target_chain,
        destination_address=tx.destination_address, cross_chain_transfer=tx.cross_chain_transfer,
        chain_transactions=[common_pb2.ChainTransactionRef(chain=chain, transaction_hash=tx_hash, block_number=block)
                            for chain, tx_hash, block in tx.chain_transactions],
        parked=transaction_pb2.ParkedSaga(last_error=p.last_error, attempts=p.attempts, reason=p.reason,
                                          park_time=timestamp(p.parked_at), dead_letter_id=p.dead_letter)
        if (p := tx.parked) else None,
        compliance=transaction_pb2.ComplianceCheck(
            screening=c.screening, decision=transaction_pb2.ComplianceDecision.Value(f"COMPLIANCE_DECISION_{c.decision}"),
            reason=c.reason) if (c := tx.compliance) and c.decision != EXEMPT else None)


# The collection of each field that names a resource (read as "collection/{id}").
_COLLECTION = {"source_wallet": "wallets", "destination_wallet": "wallets", "provider": "providers",
               "source_chain": "chains", "target_chain": "chains"}


def draft_of(tx: transaction_pb2.Transaction) -> Transaction:
    """The transaction a CreateTransaction asks for, its names read; which fields its type needs,
    and their checks, are the saga's (TransactionService.create)."""
    known = tx.type in transaction_pb2.TransactionType.values()
    kind = transaction_pb2.TransactionType.Name(tx.type).removeprefix("TRANSACTION_TYPE_") if known else str(tx.type)
    values = {}
    for field in FIELDS:
        value = getattr(tx, field)
        if value and field in _COLLECTION:
            value = f"{_COLLECTION[field]}/{resource_id(value, _COLLECTION[field], f'transaction.{field}')}"
        values[field] = value
    amount = money(tx.amount, tx.HasField("amount"), "transaction.amount")
    return Transaction("", kind, "", values["source_wallet"], values["destination_wallet"], amount, "", "", None,
                       None, None, provider=values["provider"], source_chain=values["source_chain"],
                       target_chain=values["target_chain"], destination_address=values["destination_address"])


class TransactionServicer(transaction_pb2_grpc.TransactionServiceServicer):
    def __init__(self, service: TransactionService):
        self._service = service

    async def CreateTransaction(self, request, context):
        rid = request_id(request)
        data = await self._service.create(
            rid, fingerprint(request), draft_of(request.transaction),
            lambda created: transaction_pb2.CreateTransactionResponse(
                transaction=transaction_pb(created)).SerializeToString(), current_user())
        return transaction_pb2.CreateTransactionResponse.FromString(data)

    async def GetTransaction(self, request, context):
        tx = await self._service.get(resource_id(request.name, "transactions", "name"), current_user())
        return transaction_pb2.GetTransactionResponse(transaction=transaction_pb(tx))

    async def WatchTransaction(self, request, context):
        remaining = context.time_remaining()
        watched = self._service.watch(resource_id(request.name, "transactions", "name"), current_user(),
                                      **({} if remaining is None else {"seconds": remaining}))
        async with contextlib.aclosing(watched):        # its watch ends here, whatever ends the call
            async for tx in watched:
                yield transaction_pb2.WatchTransactionResponse(transaction=transaction_pb(tx))

    async def ListTransactions(self, request, context):
        wallet = f"wallets/{resource_id(request.wallet, 'wallets', 'wallet')}" if request.wallet else ""
        page = await self._service.list(wallet, request.page_size, request.page_token, current_user())
        return transaction_pb2.ListTransactionsResponse(transactions=[transaction_pb(t) for t in page.items],
                                                        next_page_token=page.next_page_token)
