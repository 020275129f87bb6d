"""Composition root of the wallet service."""
from pathlib import Path

from diboas.events.v1 import events_pb2_grpc
from diboas.wallet.v1 import wallet_pb2_grpc
from services.runtime.db import Database
from services.runtime.messaging.rabbit_events import EventConsumer
from services.runtime.messaging.secure import KeyRing
from services.runtime.messaging.sink import EventSink
from services.runtime.server import Registration, Runtime
from services.runtime.status import error_domain
from services.runtime.tracing import MessageTracing

from . import events
from .service import WalletService
from .servicer import WalletServicer
from .tables import messaging

MIGRATIONS = Path(__file__).parent / "migrations"


def build(runtime: Runtime) -> list[Registration]:
    db = Database(runtime.service.database, MIGRATIONS)
    db.migrate()
    runtime.on_stop.append(db.close)
    service = WalletService(db)
    domain = error_domain("wallet", runtime.topology.trust_domain)
    sink = EventSink(db, messaging, "wallet", KeyRing.load(runtime.topology.certs_dir), events.handlers(service),
                     tracing=MessageTracing(runtime.tracing), domain=domain)
    if runtime.broker is not None:
        runtime.background.append(EventConsumer(runtime.broker, sink, "wallet", "wallet").run)
    return [
        Registration(wallet_pb2_grpc.add_WalletServiceServicer_to_server, WalletServicer(service, domain)),
        Registration(events_pb2_grpc.add_EventSinkServiceServicer_to_server, sink),
    ]
