"""TransactionService over gRPC: requests to domain values, named errors by field, responses."""
from __future__ import annotations

from diboas.common.v1 import common_pb2
from diboas.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from services.runtime.errors import InvalidArgument, Unimplemented
from services.runtime.requests import fingerprint, money, request_id, resource_id, timestamp

from .domain import Transaction
from .service import TransactionService

PLANNED = "arrives with the provider registry and multi-chain coordination"



def transaction_pb(tx: Transaction) -> transaction_pb2.Transaction:
    return transaction_pb2.Transaction(
        name=tx.name, type=transaction_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{tx.type}"),
        state=transaction_pb2.TransactionState.Value(f"TRANSACTION_STATE_{tx.state}"),
        source_wallet=tx.source_wallet, destination_wallet=tx.destination_wallet,
        amount=common_pb2.Money(currency_code=tx.amount.currency, amount=tx.amount.text),
        failure_reason=tx.failure_reason, hold=tx.hold, create_time=timestamp(tx.created_at),
        update_time=timestamp(tx.updated_at), complete_time=timestamp(tx.completed_at))


class TransactionServicer(transaction_pb2_grpc.TransactionServiceServicer):
    def __init__(self, service: TransactionService):
        self._service = service

    async def CreateTransaction(self, request, context):
        rid = request_id(request)
        tx = request.transaction
        if tx.type != transaction_pb2.TRANSACTION_TYPE_SEND:
            if tx.type == transaction_pb2.TRANSACTION_TYPE_UNSPECIFIED:
                raise InvalidArgument.field("transaction.type", "is required: SEND, DEPOSIT, WITHDRAW or BRIDGE")
            raise Unimplemented(f"{transaction_pb2.TransactionType.Name(tx.type)} transactions are not available yet "
                                f"({PLANNED})")
        source = resource_id(tx.source_wallet, "wallets", "transaction.source_wallet")
        destination = resource_id(tx.destination_wallet, "wallets", "transaction.destination_wallet")
        if source == destination:
            raise InvalidArgument.field("transaction.destination_wallet", "must differ from the source wallet")
        amount = money(tx.amount, tx.HasField("amount"), "transaction.amount")
        data = await self._service.create_send(
            rid, fingerprint(request), f"wallets/{source}", f"wallets/{destination}", amount,
            lambda created: transaction_pb2.CreateTransactionResponse(
                transaction=transaction_pb(created)).SerializeToString())
        return transaction_pb2.CreateTransactionResponse.FromString(data)

    async def GetTransaction(self, request, context):
        tx = await self._service.get(resource_id(request.name, "transactions", "name"))
        return transaction_pb2.GetTransactionResponse(transaction=transaction_pb(tx))

    async def ListTransactions(self, request, context):
        wallet = f"wallets/{resource_id(request.wallet, 'wallets', 'wallet')}" if request.wallet else ""
        page = await self._service.list(wallet, request.page_size, request.page_token)
        return transaction_pb2.ListTransactionsResponse(transactions=[transaction_pb(t) for t in page.items],
                                                        next_page_token=page.next_page_token)
