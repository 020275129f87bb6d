"""SEND: from one wallet to another of the same currency, inside the platform.

  hold on the source wallet ──> COMPLETED (the wallet captures the hold into the destination
  when it hears transaction.completed); the hold refused ──> FAILED, nothing held
"""
from __future__ import annotations

from services.domain.errors import InvalidArgument

from ..domain import SEND, Transaction
from .saga import EMPTY, REQUIRED, Admission, Saga, SagaContext
from .steps import hold


class Send(Saga):
    type = SEND
    fields = {"source_wallet": REQUIRED, "destination_wallet": REQUIRED, "provider": EMPTY, "source_chain": EMPTY,
              "target_chain": EMPTY, "destination_address": EMPTY}
    priority = 10

    def check_values(self, draft: Transaction) -> None:
        if draft.source_wallet == draft.destination_wallet:
            raise InvalidArgument.field("transaction.destination_wallet", "must differ from the source wallet")

    async def admit(self, draft: Transaction, wallets: Admission) -> tuple[str, str]:
        source, destination = await wallets.source_and_destination(own_destination=False)
        wallets.funds(source)
        wallets.room(destination)
        return source.owner, destination.owner

    async def run(self, tx: Transaction, context: SagaContext) -> None:
        await hold(tx, context, record=False)       # one step: no need to record PROCESSING first
