"""WITHDRAW: money leaves the platform through a payment provider.

  hold ──> PROCESSING ──> provider pays out (key "<tx>:payment") ──> COMPLETED (the hold is
  captured out of the platform) or FAILED (the hold is released)
"""
from __future__ import annotations

from ..domain import WITHDRAW, Transaction
from .saga import EMPTY, REQUIRED, Admission, Saga, SagaContext
from .steps import hold, pay


class Withdraw(Saga):
    type = WITHDRAW
    fields = {"source_wallet": REQUIRED, "destination_wallet": EMPTY, "source_chain": EMPTY, "target_chain": EMPTY,
              "destination_address": EMPTY}           # provider: optional (empty: the provider service chooses)

    async def admit(self, draft: Transaction, wallets: Admission) -> tuple[str, str]:
        owners = await wallets.out_of_the_platform()
        await wallets.provider(pay_in=False)
        return owners

    async def run(self, tx: Transaction, context: SagaContext) -> None:
        await hold(tx, context)
        await pay(tx, context, pay_in=False, wallet=tx.source_wallet)
