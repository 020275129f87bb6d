"""Composition root of the wallet service."""
from diboas.events.v1 import events_pb2_grpc
from diboas.wallet.v1 import wallet_pb2_grpc
from services.runtime.server import Registration, Runtime
from services.runtime.unimplemented import unimplemented_registration

PLANNED = "arrives with the money path issue"


def build(runtime: Runtime) -> list[Registration]:
    return [
        unimplemented_registration(wallet_pb2_grpc, "WalletService", "wallet", PLANNED),
        unimplemented_registration(events_pb2_grpc, "EventSinkService", "wallet", PLANNED),
    ]
