"""DEPOSIT: money comes in from outside through a payment provider.

  provider pays in (key "<tx>:payment") ──> COMPLETED (the wallet credits the destination on
  the event); the provider failing on every candidate ──> FAILED, nothing moved
"""
from __future__ import annotations

from ..domain import DEPOSIT, Transaction
from .saga import EMPTY, REQUIRED, Admission, Saga, SagaContext
from .steps import pay


class Deposit(Saga):
    type = DEPOSIT
    fields = {"source_wallet": EMPTY, "destination_wallet": REQUIRED, "source_chain": EMPTY, "target_chain": EMPTY,
              "destination_address": EMPTY}           # provider: optional (empty: the provider service chooses)

    async def admit(self, draft: Transaction, wallets: Admission) -> tuple[str, str]:
        destination = await wallets.destination(own=True)
        wallets.room(destination)
        await wallets.provider(pay_in=True)
        return "", destination.owner

    async def run(self, tx: Transaction, context: SagaContext) -> None:
        await pay(tx, context, pay_in=True, wallet=tx.destination_wallet)
