"""Composition root of the transaction service."""
import functools
import os
import socket
from pathlib import Path

from diboas.events.v1 import events_pb2_grpc
from diboas.transaction.v1 import transaction_pb2_grpc
from services.runtime.backlog import Backlog
from services.runtime.db import Database
from services.runtime.messaging.admin import DeadLetterServicer
from services.runtime.messaging.queue import WorkQueue
from services.runtime.messaging.rabbit_echo import EventEcho
from services.runtime.messaging.rabbit_events import RabbitTransport
from services.runtime.messaging.rabbit_work import WorkConsumer, WorkDispatcher, WorkPublisher
from services.runtime.messaging.relay import MeshTransport, Relay
from services.runtime.messaging.secure import KeyRing
from services.runtime.messaging.store import Outbox
from services.runtime.server import Registration, Runtime
from services.runtime.tracing import MessageTracing

from .partners import ChainClient, ComplianceClient, ProviderClient
from .service import TransactionService
from .servicer import TransactionServicer
from .tables import idempotency_keys, messaging, parked_work_items, work_items
from .wallet_client import WalletClient

MIGRATIONS = Path(__file__).parent / "migrations"
QUEUE = "financial.transactions"
WORKERS = 32  # sagas this process runs at once from the queue (competing consumers of it)
WATCHFUL_WORKERS = 8  # of them, those that look at the queue every 0.25 s when idle; the rest every 2 s


def build(runtime: Runtime) -> list[Registration]:
    topology, me = runtime.topology, runtime.service
    db = Database(me.database, MIGRATIONS)
    db.migrate()
    runtime.on_stop.append(db.close)

    def subscribers_of(topic: str) -> list[str]:
        return [name for name, svc in topology.services.items() if topic in svc.subscribes]

    subscribers = sorted({s for topic in me.publishes for s in subscribers_of(topic)})
    outbox = Outbox(messaging, me.identity, subscribers_of, KeyRing.load(topology.certs_dir))
    tracing = MessageTracing(runtime.tracing)
    waiting = []        # what the backlog counts outside the database
    if runtime.broker is not None:
        transport = RabbitTransport(runtime.broker, {name: [t for t in me.publishes if t in topology.service(name).subscribes]
                                                     for name in subscribers})
        waiting.append(transport.waiting)
    else:
        transport = MeshTransport({name: runtime.upstreams[name] for name in subscribers})
    relay = Relay(db, messaging, transport, me.name, tracing=tracing)
    outbox.on_commit(relay.wake)
    upstreams = runtime.upstreams
    queue = WorkQueue(db, work_items, QUEUE, parked=parked_work_items, policy=topology.queue_policy(me.name, QUEUE),
                      worker=f"{me.name}@{socket.gethostname()}:{os.getpid()}")
    # A transaction is in hand from its create until the wallet has its outcome: its saga's item
    # in the queue, then its event in the outbox (and, over RabbitMQ, in the wallet's queue).
    backlog = Backlog(db, me.name, queue.policy.max_backlog, [queue.held, outbox.undelivered],
                      "transactions wait to be settled", waiting)
    # Every saga a request creates starts at once while nothing waits in the queue: the backlog's
    # bound is the only bound on them. A lower one sent the rest to the workers, which settle
    # less than half as many (docs/decisions.md, 46).
    service = TransactionService(db, WalletClient(upstreams["wallet"]), queue, outbox,
                                 ProviderClient(upstreams["provider"]), ChainClient(upstreams["blockchain"]),
                                 compliance=ComplianceClient(upstreams["compliance"]), tracing=tracing,
                                 started_at_once=queue.policy.max_backlog, backlog=backlog)
    if runtime.broker is not None:
        publisher = WorkPublisher(runtime.broker, queue)
        runtime.background += [WorkDispatcher(db, queue, publisher).run,
                               WorkConsumer(runtime.broker, db, queue, publisher, service.attempt, WORKERS).run]
    else:
        # Every worker wakes when this process queues an item; an idle pause bounds only how late
        # a retry that fell due, or another instance's item, is taken.
        runtime.background += [service.work] * WATCHFUL_WORKERS
        runtime.background += [functools.partial(service.work, idle_seconds=2.0)] * (WORKERS - WATCHFUL_WORKERS)
    runtime.background += [relay.run, service.finish_started, service.watch_queue, backlog.watch]
    runtime.on_unready.append(service.watchers.close)       # open watches end before the drain
    if runtime.broker is not None:      # another instance's outcomes wake this one's watchers too
        echo = EventEcho(runtime.broker, me.name, me.publishes,
                         lambda subject: service.watchers.changed(subject.removeprefix("transactions/")))
        service.watchers.on_watch(echo.wanted)
        runtime.background.append(echo.run)
    return [Registration(transaction_pb2_grpc.add_TransactionServiceServicer_to_server, TransactionServicer(service)),
            Registration(events_pb2_grpc.add_DeadLetterServiceServicer_to_server,
                         DeadLetterServicer(db, relay, idempotency_keys, queue))]
