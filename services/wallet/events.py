"""What the wallet does with the transaction service's events: settle the money it holds.

  transaction.completed  the hold is captured into the destination wallet (a SEND) or out of
                         the platform (a WITHDRAW or BRIDGE); a DEPOSIT, which holds nothing,
                         credits the destination wallet. In the same database transaction as
                         the inbox record: exactly once
  transaction.failed     the hold is released back to the source wallet
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection

from diboas.events.v1 import events_pb2
from diboas.transaction.v1 import transaction_pb2
from services.runtime.wire import money_of

from .service import WalletService
from .servicer import hold_ids, wallet_id


def handlers(service: WalletService) -> dict:
    def completed(connection: Connection, envelope, payload: bytes, now: dt.datetime) -> None:
        event = events_pb2.TransactionCompleted.FromString(payload)
        if event.type == transaction_pb2.TRANSACTION_TYPE_DEPOSIT:
            amount = money_of(event.amount, "amount")
            service.credit_in(connection, now, wallet_id(event.destination_wallet, "destination_wallet"), amount,
                              event.transaction)
            return
        if not event.hold:
            return  # nothing was held for it
        source, hold = hold_ids(event.hold, "hold")
        destination = wallet_id(event.destination_wallet, "destination_wallet") if event.destination_wallet else None
        service.settle_in(connection, now, source, hold, capture=True, destination_id=destination)

    def failed(connection: Connection, envelope, payload: bytes, now: dt.datetime) -> None:
        event = events_pb2.TransactionFailed.FromString(payload)
        if not event.hold:
            return  # it failed before anything was held
        source, hold = hold_ids(event.hold, "hold")
        service.settle_in(connection, now, source, hold, capture=False, destination_id=None)

    return {"transaction.completed": completed, "transaction.failed": failed}
