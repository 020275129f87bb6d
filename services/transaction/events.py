"""The events the transaction service publishes, from a domain Transaction (wire code)."""
from __future__ import annotations

from diboas.events.v1 import events_pb2
from diboas.transaction.v1 import transaction_pb2
from services.runtime.wire import money_pb, timestamp

from .domain import COMPLETED, Transaction

COMPLETED_TOPIC, FAILED_TOPIC = "transaction.completed", "transaction.failed"


def event_for(tx: Transaction) -> tuple[str, events_pb2.TransactionCompleted | events_pb2.TransactionFailed]:
    """(topic, event) of a transaction that has ended: TransactionCompleted or TransactionFailed."""
    kind = transaction_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{tx.type}")
    if tx.state == COMPLETED:
        event = events_pb2.TransactionCompleted(transaction=tx.name, type=kind, source_wallet=tx.source_wallet,
                                                destination_wallet=tx.destination_wallet, amount=money_pb(tx.amount),
                                                hold=tx.hold)
        event.complete_time.CopyFrom(timestamp(tx.completed_at))
        return COMPLETED_TOPIC, event
    event = events_pb2.TransactionFailed(transaction=tx.name, type=kind, source_wallet=tx.source_wallet,
                                         destination_wallet=tx.destination_wallet, amount=money_pb(tx.amount),
                                         hold=tx.hold, reason=tx.failure_reason)
    event.fail_time.CopyFrom(timestamp(tx.completed_at))
    return FAILED_TOPIC, event
