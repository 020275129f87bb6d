"""Composition root of the transaction service."""
from diboas.transaction.v1 import transaction_pb2_grpc
from services.runtime.server import Registration, Runtime
from services.runtime.unimplemented import unimplemented_registration

PLANNED = "arrives with the money path issue"


def build(runtime: Runtime) -> list[Registration]:
    return [
        unimplemented_registration(transaction_pb2_grpc, "TransactionService", "transaction", PLANNED),
    ]
