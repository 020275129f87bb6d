"""BRIDGE: money leaves the platform as tokens moved to another chain.

  hold ──> PROCESSING ──> cross-chain transfer (key "<tx>:bridge") ──> COMPLETED (the hold is
  captured out) or, when the transfer was compensated, FAILED (the hold is released)
"""
from __future__ import annotations

from services.domain.chains import address_problem
from services.domain.errors import InvalidArgument, ServiceUnavailable

from ..domain import BRIDGE, Transaction
from .saga import EMPTY, REQUIRED, Admission, Fail, Saga, SagaContext
from .steps import hold, step


class Bridge(Saga):
    type = BRIDGE
    fields = {"source_wallet": REQUIRED, "destination_wallet": EMPTY, "provider": EMPTY, "source_chain": REQUIRED,
              "target_chain": REQUIRED, "destination_address": REQUIRED}

    def check_values(self, draft: Transaction) -> None:
        if draft.source_chain == draft.target_chain:
            raise InvalidArgument.field("transaction.target_chain", "must differ from the source chain")
        if problem := address_problem(draft.destination_address):
            raise InvalidArgument.field("transaction.destination_address", problem)

    async def admit(self, draft: Transaction, wallets: Admission) -> tuple[str, str]:
        owners = await wallets.out_of_the_platform()
        await wallets.chains()
        return owners

    async def run(self, tx: Transaction, context: SagaContext) -> None:
        await hold(tx, context)
        transfer = await step(context.chains.transfer(tx.source_chain, tx.target_chain, tx.amount,
                                                      tx.destination_address, tx.name, request_id=f"{tx.id}:bridge"))
        tx.cross_chain_transfer, tx.chain_transactions = transfer.name, transfer.chain_transactions
        if transfer.state == "COMPENSATED":
            raise Fail(f"{transfer.name} was compensated: {transfer.failure_reason}")
        if transfer.state != "COMPLETED":
            # In progress, or FAILED: compensation did not finish and an operator must act. The
            # money stays held (neither lost nor spent); the item asks again later.
            await context.progress(tx)
            raise ServiceUnavailable(f"{transfer.name} is {transfer.state.lower()}: {transfer.failure_reason}",
                                     reason=f"TRANSFER_{transfer.state}")
