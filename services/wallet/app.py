"""Composition root of the wallet service."""
from pathlib import Path

from diboas.events.v1 import events_pb2_grpc
from diboas.wallet.v1 import wallet_pb2_grpc
from services.runtime.db import Database
from services.runtime.server import Registration, Runtime
from services.runtime.unimplemented import unimplemented_registration

from .service import WalletService
from .servicer import WalletServicer

MIGRATIONS = Path(__file__).parent / "migrations"
PLANNED = "arrives with the money path issue"


def build(runtime: Runtime) -> list[Registration]:
    db = Database(runtime.service.database, MIGRATIONS)
    db.migrate()
    runtime.on_stop.append(db.close)
    return [
        Registration(wallet_pb2_grpc.add_WalletServiceServicer_to_server, WalletServicer(WalletService(db))),
        unimplemented_registration(events_pb2_grpc, "EventSinkService", "wallet", PLANNED),
    ]
