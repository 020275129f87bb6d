"""The saga of each transaction type over fakes of the wallet, provider and chain clients: its
happy path, a definitive failure, an ambiguous step asked again with the same idempotency key,
and what it leaves held for the event to capture or release."""
from __future__ import annotations

import copy

import pytest
from transaction_fakes import T0, Clock, FakeChains, FakeProviders, FakeWallet, payment, transfer, usd

from services.domain.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ServiceUnavailable,
)
from services.transaction.domain import BRIDGE, DEPOSIT, PENDING, PROCESSING, SEND, WITHDRAW, Transaction
from services.transaction.sagas import SAGAS
from services.transaction.sagas.saga import Fail, SagaContext
from services.transaction.sagas.steps import step


def transaction(kind: str, **fields) -> Transaction:
    return Transaction("t1", kind, PENDING, fields.pop("source_wallet", ""), fields.pop("destination_wallet", ""),
                       usd("10.00"), "", "", T0, T0, None, **fields)


class Run:
    """One saga over fresh fakes; `saved` has a copy of the transaction at each progress write."""

    def __init__(self):
        self.wallet, self.providers, self.chains, self.clock = FakeWallet(), FakeProviders(), FakeChains(), Clock()
        self.saved: list[Transaction] = []

        async def save(tx: Transaction) -> None:
            self.saved.append(copy.deepcopy(tx))
        self.context = SagaContext(self.wallet, self.providers, self.chains, self.clock, save)

    async def __call__(self, tx: Transaction) -> None:
        await SAGAS.of(tx.type).run(tx, self.context)


@pytest.fixture
def run() -> Run:
    return Run()


# --- SEND ---------------------------------------------------------------------------------------

async def test_a_send_holds_the_amount_once_and_completes(run):
    tx = transaction(SEND, source_wallet="wallets/a", destination_wallet="wallets/b")
    await run(tx)
    assert run.wallet.hold_calls == [("wallets/a", usd("10.00"), "t1:hold")]
    assert tx.hold == "wallets/a/holds/h1" and run.saved == []          # one step: nothing recorded before the end


async def test_a_send_whose_hold_is_refused_fails_with_the_wallets_words(run):
    run.wallet.hold_script.answers = [FailedPrecondition("insufficient funds in wallets/a", reason="INSUFFICIENT_FUNDS")]
    tx = transaction(SEND, source_wallet="wallets/a", destination_wallet="wallets/b")
    with pytest.raises(Fail, match="insufficient funds in wallets/a"):
        await run(tx)
    assert tx.hold == ""                                                # nothing held: nothing to release


@pytest.mark.parametrize("doubt", [ServiceUnavailable("wallet down", reason="UPSTREAM_UNAVAILABLE"),
                                   DeadlineExceeded("too late", reason="DEADLINE_EXCEEDED")])
async def test_a_send_whose_hold_may_have_happened_is_asked_again_with_the_same_key(run, doubt):
    run.wallet.hold_script.answers = [doubt]
    tx = transaction(SEND, source_wallet="wallets/a", destination_wallet="wallets/b")
    with pytest.raises(type(doubt)):
        await run(tx)
    await run(tx)
    assert [call[2] for call in run.wallet.hold_calls] == ["t1:hold", "t1:hold"]
    assert tx.hold == "wallets/a/holds/h1"


# --- DEPOSIT ------------------------------------------------------------------------------------

async def test_a_deposit_pays_in_to_the_destination_and_records_the_provider_that_did(run):
    tx = transaction(DEPOSIT, destination_wallet="wallets/b", provider="providers/alpha-pay")
    run.providers.script.answers = [payment("SUCCEEDED")]
    await run(tx)
    assert run.providers.calls == [(True, usd("10.00"), "wallets/b", "transactions/t1", "providers/alpha-pay",
                                    "t1:payment")]
    assert (tx.provider, tx.provider_payment, tx.hold) == ("providers/beta-ramp", "payments/p1", "")
    assert run.wallet.hold_calls == []


@pytest.mark.parametrize("answer,reason", [
    (payment("FAILED", "card declined"), "payments/p1 failed: card declined"),
    (ServiceUnavailable("no healthy provider", reason="NO_PROVIDER_AVAILABLE"), "no healthy provider"),
    (FailedPrecondition("no provider's terms allow it", reason="NO_PROVIDER_ABLE"), "no provider's terms allow it"),
])
async def test_a_deposit_no_provider_paid_in_fails(run, answer, reason):
    run.providers.script.answers = [answer]
    tx = transaction(DEPOSIT, destination_wallet="wallets/b")
    with pytest.raises(Fail) as failed:
        await run(tx)
    assert failed.value.reason == reason


@pytest.mark.parametrize("doubt", [payment("PENDING"), Internal("provider crashed"),
                                   ServiceUnavailable("provider down", reason="UPSTREAM_UNAVAILABLE")])
async def test_a_deposit_whose_payment_may_have_happened_is_asked_again_with_the_same_key(run, doubt):
    run.providers.script.answers = [doubt]
    tx = transaction(DEPOSIT, destination_wallet="wallets/b")
    with pytest.raises((ServiceUnavailable, Internal)):
        await run(tx)
    await run(tx)
    assert [call[5] for call in run.providers.calls] == ["t1:payment", "t1:payment"]
    assert tx.provider_payment.startswith("payments/")


# --- WITHDRAW -----------------------------------------------------------------------------------

async def test_a_withdrawal_holds_records_processing_then_pays_out_from_the_source(run):
    tx = transaction(WITHDRAW, source_wallet="wallets/a")
    await run(tx)
    assert [(s.state, s.hold) for s in run.saved] == [(PROCESSING, "wallets/a/holds/h1")]
    assert run.providers.calls[0][:3] == (False, usd("10.00"), "wallets/a")
    assert tx.hold == "wallets/a/holds/h1" and tx.provider == "providers/alpha-pay"


async def test_a_withdrawal_whose_payout_failed_fails_and_keeps_the_hold_for_its_release(run):
    run.providers.script.answers = [payment("FAILED", "bank closed")]
    tx = transaction(WITHDRAW, source_wallet="wallets/a")
    with pytest.raises(Fail, match="bank closed"):
        await run(tx)
    assert tx.hold == "wallets/a/holds/h1"             # the failed event names it: the wallet releases it


async def test_a_withdrawal_retried_after_its_hold_does_not_hold_again_and_pays_with_the_same_key(run):
    run.providers.script.answers = [DeadlineExceeded("too late", reason="DEADLINE_EXCEEDED")]
    tx = transaction(WITHDRAW, source_wallet="wallets/a")
    with pytest.raises(DeadlineExceeded):
        await run(tx)
    retried = copy.deepcopy(run.saved[-1])             # the next attempt reads what was recorded
    await run(retried)
    assert len(run.wallet.hold_calls) == 1
    assert [call[5] for call in run.providers.calls] == ["t1:payment", "t1:payment"]


# --- BRIDGE -------------------------------------------------------------------------------------

def bridge() -> Transaction:
    return transaction(BRIDGE, source_wallet="wallets/a", source_chain="chains/ethereum",
                       target_chain="chains/polygon", destination_address="0x" + "ab" * 20)


async def test_a_bridge_holds_then_transfers_and_keeps_the_chain_transactions(run):
    tx = bridge()
    await run(tx)
    assert run.chains.calls == [("chains/ethereum", "chains/polygon", usd("10.00"), "0x" + "ab" * 20,
                                 "transactions/t1", "t1:bridge")]
    assert tx.cross_chain_transfer == "crossChainTransfers/x1" and len(tx.chain_transactions) == 2
    assert [s.state for s in run.saved] == [PROCESSING]


async def test_a_compensated_bridge_fails_and_keeps_the_hold_for_its_release(run):
    run.chains.script.answers = [transfer("COMPENSATED", "target chain halted")]
    tx = bridge()
    with pytest.raises(Fail, match="compensated: target chain halted"):
        await run(tx)
    assert tx.hold == "wallets/a/holds/h1" and tx.cross_chain_transfer == "crossChainTransfers/x1"


@pytest.mark.parametrize("state", ["IN_PROGRESS", "FAILED"])
async def test_a_bridge_not_finished_keeps_the_money_held_and_asks_again_with_the_same_key(run, state):
    run.chains.script.answers = [transfer(state, "waiting for an operator")]
    tx = bridge()
    with pytest.raises(ServiceUnavailable) as doubt:
        await run(tx)
    assert doubt.value.reason == f"TRANSFER_{state}"
    assert run.saved[-1].cross_chain_transfer == "crossChainTransfers/x1" and run.saved[-1].hold
    await run(tx)
    assert [call[5] for call in run.chains.calls] == ["t1:bridge", "t1:bridge"] and len(run.wallet.hold_calls) == 1


# --- one step -----------------------------------------------------------------------------------

async def _raise(exc: Exception):
    raise exc


async def test_an_atomic_step_that_answered_anything_but_unavailable_did_not_happen():
    with pytest.raises(Fail):
        await step(_raise(Internal("the wallet's bug")), atomic=True)
    with pytest.raises(Internal):                          # not atomic: it may have happened
        await step(_raise(Internal("the provider's bug")))
    with pytest.raises(ServiceUnavailable):
        await step(_raise(ServiceUnavailable("down", reason="UPSTREAM_UNAVAILABLE")), atomic=True)
    with pytest.raises(Fail):
        await step(_raise(InvalidArgument.field("amount", "is wrong")))
