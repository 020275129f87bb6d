"""The transaction use cases (create, get, list) and the queue workers, over fakes of the wallet,
provider and chain clients, of the units of work and of the queue, with a fake clock."""
from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

import pytest
from transaction_fakes import (
    T0,
    Clock,
    FakeBacklog,
    FakeChains,
    FakeCompliance,
    FakeProviders,
    FakeQueue,
    FakeUnits,
    FakeWallet,
    payment,
    usd,
)

from services.domain.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceUnavailable,
)
from services.runtime.messaging.queue import Claimed
from services.runtime.users import OPERATOR_ROLE, User
from services.transaction.domain import COMPLETED, DEPOSIT, FAILED, PENDING, PROCESSING, SEND, WITHDRAW, Transaction
from services.transaction.ports import ProviderTerms
from services.transaction.service import TransactionService
from services.transaction.watchers import Watchers

ALICE, BOB = User("alice", frozenset()), User("bob", frozenset())
OPERATOR = User("ops", frozenset({OPERATOR_ROLE}))


class Service:
    """A TransactionService over fakes, and the fakes."""

    def __init__(self, started_at_once: int = 0):
        self.clock = Clock()
        self.wallet = FakeWallet(a=("alice", "USD", "100.00", "100.00"), b=("bob", "USD", "0", "0"),
                                 e=("erin", "EUR", "0", "0"), full=("bob", "USD", "999999995.00", "999999995.00"))
        self.providers, self.chains = FakeProviders(), FakeChains()
        self.units = FakeUnits(self.clock)
        self.queue, self.backlog = FakeQueue(self.units), FakeBacklog()
        ids = iter(f"t{n}" for n in range(1, 100))
        self.compliance = FakeCompliance()
        self.service = TransactionService(None, self.wallet, self.queue, None, self.providers, self.chains,
                                          compliance=self.compliance, clock=self.clock, ids=lambda: next(ids),
                                          units=self.units, started_at_once=started_at_once, backlog=self.backlog)

    async def create(self, kind: str, amount: str = "10.00", request_id: str = "r1", viewer: User | None = ALICE,
                     fingerprint: str = "fp", **fields) -> str:
        draft = Transaction("", kind, "", fields.pop("source_wallet", ""), fields.pop("destination_wallet", ""),
                            usd(amount), "", "", None, None, None, **fields)
        return (await self.service.create(request_id, fingerprint, draft, lambda tx: tx.id.encode(), viewer)).decode()

    async def send(self, amount: str = "10.00", request_id: str = "r1", **fields) -> str:
        fields = {"source_wallet": "wallets/a", "destination_wallet": "wallets/b", **fields}
        return await self.create(SEND, amount, request_id, **fields)

    def stored(self, tx_id: str) -> Transaction:
        return self.units.state.transactions[tx_id][0]

    async def work_until_idle(self) -> None:
        """Run one worker until the queue is empty (every retry comes back at once)."""
        stop = asyncio.Event()
        worker = asyncio.create_task(self.service.work(stop, idle_seconds=0.001))
        for _ in range(200):
            if not self.units.state.queued:
                break
            await asyncio.sleep(0.001)
        stop.set()
        await worker


@pytest.fixture
def s() -> Service:
    return Service()


# --- create -------------------------------------------------------------------------------------

async def test_a_created_send_is_pending_queued_first_and_owned_by_both_wallets_owners(s):
    tx_id = await s.send()
    tx, source_owner, destination_owner = s.units.state.transactions[tx_id]
    assert (tx.state, tx.created_at, tx.hold, source_owner, destination_owner) == (PENDING, T0, "", "alice", "bob")
    assert s.units.state.queued == {tx_id: 10}
    deposit = await s.create(DEPOSIT, request_id="r2", destination_wallet="wallets/a")
    assert s.units.state.queued[deposit] == 5


async def test_a_repeated_request_returns_the_first_answer_and_writes_nothing_more(s):
    first = await s.send()
    assert await s.send() == first
    assert list(s.units.state.transactions) == [first] and s.units.units == 1
    with pytest.raises(AlreadyExists):
        await s.create(SEND, source_wallet="wallets/a", destination_wallet="wallets/b", fingerprint="other")


async def test_while_the_backlog_is_full_a_new_request_is_refused_and_nothing_is_written_or_asked(s):
    first = await s.send()
    s.backlog.full = True
    asked, describe = [], s.wallet.describe

    async def recorded(name):
        asked.append(name)
        return await describe(name)
    s.wallet.describe = recorded
    with pytest.raises(ResourceExhausted) as refused:
        await s.send(request_id="r2")
    assert (refused.value.reason, refused.value.retry_after_seconds) == ("BACKLOG_FULL", 3)
    assert list(s.units.state.transactions) == [first] and list(s.units.state.queued) == [first] and asked == []
    assert await s.send() == first              # an accepted request is answered again, full or not
    assert s.backlog.accepted_count == 1
    s.backlog.full = False
    assert await s.send(request_id="r2") != first and s.backlog.accepted_count == 2


async def test_a_request_keeps_its_place_below_the_backlog_bound_until_it_is_committed_or_refused(s):
    seen, describe_all = [], s.wallet.describe_all

    async def recorded(names):
        seen.append(s.backlog.admitting)
        return await describe_all(names)
    s.wallet.describe_all = recorded
    await s.send()
    assert seen == [1] and s.backlog.admitting == 0 and s.backlog.accepted_count == 1

    with pytest.raises(NotFound):
        await s.send(request_id="r2", destination_wallet="wallets/nowhere")
    assert seen == [1, 1] and s.backlog.admitting == 0 and s.backlog.accepted_count == 1   # given back


@pytest.mark.parametrize("kind,fields,field", [
    (SEND, {"source_wallet": "wallets/a", "destination_wallet": "wallets/a"}, "transaction.destination_wallet"),
    (SEND, {"source_wallet": "wallets/a"}, "transaction.destination_wallet"),
    (DEPOSIT, {"destination_wallet": "wallets/a", "source_wallet": "wallets/b"}, "transaction.source_wallet"),
    (WITHDRAW, {"source_wallet": "wallets/a", "destination_wallet": "wallets/b"}, "transaction.destination_wallet"),
    ("BRIDGE", {"source_wallet": "wallets/a", "source_chain": "chains/x", "target_chain": "chains/x",
                "destination_address": "0x" + "ab" * 20}, "transaction.target_chain"),
    ("BRIDGE", {"source_wallet": "wallets/a", "source_chain": "chains/x", "target_chain": "chains/y",
                "destination_address": "not an address"}, "transaction.destination_address"),
    (SEND, {"source_wallet": "wallets/a", "destination_wallet": "wallets/b", "provider": "providers/stripe"},
     "transaction.provider"),
    ("UNSPECIFIED", {}, "transaction.type"),
])
async def test_a_draft_its_saga_refuses_names_the_field_and_asks_the_wallet_nothing(s, kind, fields, field):
    calls = []
    s.wallet.describe = lambda name: calls.append(name)
    with pytest.raises(InvalidArgument) as refused:
        await s.create(kind, **fields)
    assert [v.field for v in refused.value.violations] == [field]
    assert calls == [] and s.units.state.transactions == {}


@pytest.mark.parametrize("fields,error,reason", [
    ({"amount": "100.01"}, FailedPrecondition, "INSUFFICIENT_FUNDS"),
    ({"amount": "1000000.01"}, InvalidArgument, "AMOUNT_OVER_LIMIT"),
    ({"destination_wallet": "wallets/missing"}, NotFound, "WALLET_NOT_FOUND"),
    ({"destination_wallet": "wallets/e"}, InvalidArgument, "INVALID_ARGUMENT"),
    ({"source_wallet": "wallets/b", "destination_wallet": "wallets/a"}, NotFound, "WALLET_NOT_FOUND"),   # bob's
    ({"destination_wallet": "wallets/full"}, FailedPrecondition, "BALANCE_LIMIT_EXCEEDED"),
])
async def test_a_send_the_wallets_refuse_writes_nothing(s, fields, error, reason):
    amount = fields.pop("amount", "10.00")
    with pytest.raises(error) as refused:
        await s.send(amount, **fields)
    assert refused.value.reason == reason
    assert s.units.state.transactions == {} and s.units.state.queued == {}


async def test_a_send_reads_what_is_on_its_way_with_its_request_id_then_both_wallets_in_one_call(s):
    looked_up = s.service.units.stored_or_read

    def recorded(operation, request_id, fingerprint, read):
        def read_on_its_way(unit):
            on_its_way = read(unit)
            s.wallet.asked.append((request_id, "on its way", on_its_way.text))
            return on_its_way
        return looked_up(operation, request_id, fingerprint, read_on_its_way)

    async def read_again(wallet, currency):
        raise AssertionError(f"what is on its way to {wallet} was read a second time")
    s.service.units.stored_or_read, s.service._incoming = recorded, read_again
    await s.send()
    assert s.wallet.asked == [("r1", "on its way", "0.00"), ["wallets/a", "wallets/b"]]


async def test_a_wallet_service_without_the_batched_read_is_asked_wallet_by_wallet(s):
    s.wallet.batch_unimplemented = True
    assert await s.send()
    assert s.wallet.asked == [["wallets/a", "wallets/b"], "wallets/a", "wallets/b"]
    with pytest.raises(NotFound) as refused:
        await s.send(request_id="r2", destination_wallet="wallets/missing")
    assert refused.value.message == "wallet wallets/missing does not exist"


@pytest.mark.parametrize("fields,named", [
    ({"source_wallet": "wallets/gone", "destination_wallet": "wallets/missing"}, "wallets/gone"),
    ({"destination_wallet": "wallets/missing"}, "wallets/missing"),
    ({"source_wallet": "wallets/b", "destination_wallet": "wallets/missing"}, "wallets/b"),    # bob's, first
])
async def test_a_send_to_or_from_a_missing_wallet_names_the_first_one_missing(s, fields, named):
    with pytest.raises(NotFound) as refused:
        await s.send(**fields)
    assert refused.value.message == f"wallet {named} does not exist"


async def test_the_room_below_max_balance_counts_what_is_already_on_its_way(s):
    s.wallet.wallets["wallets/full"] = ("bob", "USD", "999999980.00", "999999980.00")
    await s.send("10.00", "r1", destination_wallet="wallets/full")
    await s.send("10.00", "r2", destination_wallet="wallets/full")      # 999,999,990 + 10: still room
    with pytest.raises(FailedPrecondition) as refused:
        await s.send("10.00", "r3", destination_wallet="wallets/full")
    assert refused.value.reason == "BALANCE_LIMIT_EXCEEDED"


async def test_a_provider_or_chain_that_does_not_exist_is_refused_and_nothing_is_written(s):
    s.providers.unknown.add("providers/nobody")
    s.chains.unknown.add("chains/nowhere")
    address = "0x" + "ab" * 20
    refused = [
        (DEPOSIT, {"destination_wallet": "wallets/a", "provider": "providers/nobody"}, "PROVIDER_NOT_FOUND"),
        (WITHDRAW, {"source_wallet": "wallets/a", "provider": "providers/nobody"}, "PROVIDER_NOT_FOUND"),
        ("BRIDGE", {"source_wallet": "wallets/a", "source_chain": "chains/nowhere", "target_chain": "chains/y",
                    "destination_address": address}, "CHAIN_NOT_FOUND"),
        ("BRIDGE", {"source_wallet": "wallets/a", "source_chain": "chains/x", "target_chain": "chains/nowhere",
                    "destination_address": address}, "CHAIN_NOT_FOUND"),
    ]
    for n, (kind, fields, reason) in enumerate(refused):
        with pytest.raises(NotFound) as caught:
            await s.create(kind, request_id=f"r{n}", **fields)
        assert caught.value.reason == reason
    assert s.units.state.transactions == {} and s.units.state.queued == {} and s.units.state.responses == {}
    # A provider it knows, or none named (the provider service chooses): accepted.
    assert await s.create(DEPOSIT, request_id="ok-1", destination_wallet="wallets/a", provider="providers/alpha")
    assert await s.create(DEPOSIT, request_id="ok-2", destination_wallet="wallets/a")
    assert s.providers.required == ["providers/nobody", "providers/nobody", "providers/alpha"]


async def test_a_payment_the_named_provider_does_not_take_is_refused_naming_why_and_nothing_is_written(s):
    s.providers.terms["providers/alpha"] = ProviderTerms(
        "providers/alpha", frozenset({"USD"}), frozenset({"PAY_IN", "PAY_OUT"}),
        minimum={"USD": Decimal("10")}, maximum={"USD": Decimal("20000")})
    s.providers.terms["providers/in-only"] = ProviderTerms("providers/in-only", frozenset({"USD"}), frozenset({"PAY_IN"}))
    s.providers.terms["providers/euro"] = ProviderTerms("providers/euro", frozenset({"EUR", "GBP"}),
                                                        frozenset({"PAY_IN", "PAY_OUT"}))
    refused = [
        (DEPOSIT, "9.99", "providers/alpha", "transaction.amount.amount",
         "providers/alpha takes at least 10 USD, not 9.99 USD"),
        (WITHDRAW, "5.00", "providers/alpha", "transaction.amount.amount",
         "providers/alpha takes at least 10 USD, not 5.00 USD"),
        (DEPOSIT, "20000.01", "providers/alpha", "transaction.amount.amount",
         "providers/alpha takes at most 20000 USD, not 20000.01 USD"),
        (WITHDRAW, "20.00", "providers/in-only", "transaction.provider", "providers/in-only takes no pay-outs"),
        (DEPOSIT, "20.00", "providers/euro", "transaction.provider",
         "providers/euro does not handle USD (it handles EUR, GBP)"),
    ]
    for n, (kind, amount, provider, field, problem) in enumerate(refused):
        wallet = {"destination_wallet": "wallets/a"} if kind == DEPOSIT else {"source_wallet": "wallets/a"}
        with pytest.raises(InvalidArgument) as caught:
            await s.create(kind, amount, f"r{n}", provider=provider, **wallet)
        assert (caught.value.reason, caught.value.message) == ("PROVIDER_CANNOT_PAY", f"{field}: {problem}")
        assert caught.value.violations[0].field == field and caught.value.metadata == {"provider": provider}
    assert s.units.state.transactions == {} and s.units.state.queued == {} and s.units.state.responses == {}
    # At the limits, or while the provider service cannot say: accepted (the saga finds out).
    assert await s.create(DEPOSIT, "10.00", "ok-1", destination_wallet="wallets/a", provider="providers/alpha")
    assert await s.create(DEPOSIT, "20.00", "ok-2", destination_wallet="wallets/a", provider="providers/in-only")
    s.providers.away.add("providers/euro")
    assert await s.create(DEPOSIT, "20.00", "ok-3", destination_wallet="wallets/a", provider="providers/euro")


async def test_a_deposit_into_someone_elses_wallet_is_not_found(s):
    with pytest.raises(NotFound):
        await s.create(DEPOSIT, destination_wallet="wallets/b", viewer=ALICE)
    assert await s.create(DEPOSIT, destination_wallet="wallets/b", viewer=OPERATOR)


# --- reads --------------------------------------------------------------------------------------

async def test_a_user_gets_and_lists_only_the_transactions_of_their_own_wallets(s):
    sent = await s.send()
    s.clock.advance(1)
    deposit = await s.create(DEPOSIT, request_id="r2", destination_wallet="wallets/a")
    assert (await s.service.get(sent, BOB)).id == sent
    with pytest.raises(NotFound):
        await s.service.get(deposit, BOB)
    assert [tx.id for tx in (await s.service.list("", 0, "", ALICE)).items] == [deposit, sent]
    assert [tx.id for tx in (await s.service.list("", 0, "", BOB)).items] == [sent]
    first = await s.service.list("wallets/a", 1, "", OPERATOR)
    assert [tx.id for tx in first.items] == [deposit] and first.next_page_token
    assert [tx.id for tx in (await s.service.list("wallets/a", 1, first.next_page_token, OPERATOR)).items] == [sent]


# --- the workers --------------------------------------------------------------------------------

async def test_a_send_completes_with_its_event_and_leaves_the_queue(s):
    tx_id = await s.send()
    s.clock.advance(5)
    await s.work_until_idle()
    tx = s.stored(tx_id)
    assert (tx.state, tx.hold, tx.completed_at) == (COMPLETED, "wallets/a/holds/h1", s.clock())
    [(topic, subject, event)] = s.units.state.published
    assert (topic, subject, event.hold, event.amount.amount) == ("transaction.completed", f"transactions/{tx_id}",
                                                                  "wallets/a/holds/h1", "10.00")
    assert s.units.state.queued == {}


async def test_a_failed_withdrawal_publishes_its_hold_for_release(s):
    s.providers.script.answers = [payment("FAILED", "bank closed")]
    tx_id = await s.create(WITHDRAW, source_wallet="wallets/a")
    await s.work_until_idle()
    tx = s.stored(tx_id)
    assert (tx.state, tx.failure_reason) == (FAILED, "payments/p1 failed: bank closed")
    [(topic, _, event)] = s.units.state.published
    assert (topic, event.hold, event.reason) == ("transaction.failed", "wallets/a/holds/h1", tx.failure_reason)


async def test_an_attempt_that_may_have_happened_is_retried_with_the_same_keys_then_completes(s):
    s.providers.script.answers = [ServiceUnavailable("provider down", reason="UPSTREAM_UNAVAILABLE")]
    tx_id = await s.create(WITHDRAW, source_wallet="wallets/a")
    await s.work_until_idle()
    assert s.queue.errors == [(tx_id, "provider down")]
    assert len(s.wallet.hold_calls) == 1                     # the hold was recorded: not asked again
    assert [call[5] for call in s.providers.calls] == [f"{tx_id}:payment"] * 2
    assert s.stored(tx_id).state == COMPLETED and len(s.units.state.published) == 1


async def test_a_saga_given_up_on_is_parked_with_its_money_held_and_shows_why_to_operators_only(s):
    s.providers.script.default = ServiceUnavailable("provider down", reason="UPSTREAM_UNAVAILABLE")
    tx_id = await s.create(WITHDRAW, source_wallet="wallets/a")
    await s.work_until_idle()
    assert len(s.queue.errors) == s.queue.max_attempts
    tx = await s.service.get(tx_id, OPERATOR)
    assert (tx.state, tx.hold, tx.parked.attempts, tx.parked.last_error) == (PROCESSING, "wallets/a/holds/h1", 3,
                                                                             "provider down")
    assert (await s.service.get(tx_id, ALICE)).parked.last_error == ""
    assert s.units.state.published == []                      # no event: nothing released, nothing captured


async def test_an_item_of_a_transaction_that_has_ended_is_dropped_without_running_its_saga(s):
    tx_id = await s.send()
    await s.work_until_idle()
    s.units.state.queued[tx_id] = 10                         # a second delivery of the same item
    await s.service.process(Claimed(9, tx_id, 1))
    assert s.units.state.queued == {} and len(s.wallet.hold_calls) == 1 and len(s.units.state.published) == 1


async def test_an_outcome_is_not_written_over_one_already_recorded(s):
    tx_id = await s.send()
    s.wallet.hold_script.answers = [lambda: s.units.state.transactions[tx_id][0].move_to(FAILED, T0, reason="x")]
    await s.work_until_idle()
    assert s.stored(tx_id).state == FAILED and s.units.state.published == [] and s.units.state.queued == {}


def test_every_transaction_type_of_the_contract_has_one_saga_whose_name_fits_the_table():
    from diboas.transaction.v1 import transaction_pb2
    from services.transaction.sagas import SAGAS
    from services.transaction.tables import transactions

    contract = [name.removeprefix("TRANSACTION_TYPE_") for name in transaction_pb2.TransactionType.keys()]
    assert sorted(SAGAS.types) == sorted(set(contract) - {"UNSPECIFIED"})
    assert all(len(kind) <= transactions.c.type.type.length for kind in SAGAS.types)


# --- sagas started by their request ---------------------------------------------------------------

async def settle_started(s: Service) -> None:
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(s.service.finish_started(stop), 5)


async def test_a_send_starts_its_saga_as_soon_as_it_is_created_without_a_worker():
    s = Service(started_at_once=4)
    tx_id = await s.send()
    await settle_started(s)
    assert s.stored(tx_id).state == COMPLETED
    assert s.units.state.queued == {} and len(s.wallet.hold_calls) == 1


async def test_beyond_the_limit_a_new_saga_waits_for_the_workers():
    s = Service(started_at_once=1)
    release = asyncio.Event()
    holding = s.wallet.hold

    async def slow_hold(*args, **kwargs):
        await release.wait()
        return await holding(*args, **kwargs)
    s.wallet.hold = slow_hold
    first = await s.send(request_id="r1")
    second = await s.send(request_id="r2")
    await asyncio.sleep(0.01)
    assert s.stored(first).state == PENDING and s.stored(second).state == PENDING
    assert set(s.units.state.queued) == {first, second}
    release.set()
    await settle_started(s)
    assert s.stored(first).state == COMPLETED and s.stored(second).state == PENDING
    await s.work_until_idle()
    assert s.stored(second).state == COMPLETED


async def test_while_sagas_wait_in_the_queue_a_new_one_queues_behind_them():
    s = Service(started_at_once=1)
    gate = asyncio.Event()
    holding = s.wallet.hold

    async def gated_hold(source, amount, reference, request_id):
        if request_id == "t1:hold":
            await gate.wait()
        return await holding(source, amount, reference, request_id)
    s.wallet.hold = gated_hold
    started = await s.send(request_id="r1")           # starts at once, and waits at its hold
    waiting = await s.send(request_id="r2")           # the one start is taken: queued
    gate.set()
    await settle_started(s)                           # the start is free again ...
    assert s.stored(started).state == COMPLETED
    newer = await s.send(request_id="r3")
    await settle_started(s)
    # ... but starting at once would overtake r2, which waits for a worker: r3 queues behind it.
    assert s.stored(newer).state == PENDING and set(s.units.state.queued) == {waiting, newer}
    await s.service.look_at_queue()                   # a look finds them waiting still
    assert (await s.send(request_id="r4")) and set(s.units.state.queued) == {waiting, newer, "t4"}
    await s.work_until_idle()
    assert s.wallet.hold_calls[1:] == [("wallets/a", usd("10.00"), f"{t}:hold") for t in ("t2", "t3", "t4")]
    await s.service.look_at_queue()                   # nothing waits any more: starts are back
    latest = await s.send(request_id="r5")
    await settle_started(s)
    assert s.stored(latest).state == COMPLETED and s.units.state.queued == {}


async def test_a_look_that_began_before_an_item_was_queued_does_not_clear_the_wait():
    s = Service(started_at_once=1)
    gate, answered, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()
    holding, run = s.wallet.hold, s.units.run

    async def gated_hold(source, amount, reference, request_id):
        await gate.wait()
        return await holding(source, amount, reference, request_id)

    async def slow_run(fn, *args):
        if fn == s.queue.anything_waiting:
            answer = fn(*args)                        # the queue as it is now: nothing waits
            answered.set()
            await finish.wait()                       # ... and the answer arrives late
            return answer
        return await run(fn, *args)
    s.wallet.hold, s.units.run = gated_hold, slow_run
    await s.send(request_id="r1")                     # takes the one start
    look = asyncio.create_task(s.service.look_at_queue())
    await answered.wait()
    waiting = await s.send(request_id="r2")           # queued while the look is on its way
    finish.set()
    await look
    gate.set()
    await settle_started(s)                           # the start is free again
    newer = await s.send(request_id="r3")
    await settle_started(s)
    assert s.stored(newer).state == PENDING and set(s.units.state.queued) == {waiting, newer}


async def test_a_started_saga_whose_step_fails_is_left_to_the_workers_retries():
    s = Service(started_at_once=4)
    s.wallet.hold_script.answers = [ServiceUnavailable("wallet down", reason="UPSTREAM_UNAVAILABLE")]
    tx_id = await s.send()
    await settle_started(s)
    assert s.stored(tx_id).state == PENDING and tx_id in s.units.state.queued
    assert s.queue.errors == [(tx_id, "wallet down")]
    await s.work_until_idle()
    assert s.stored(tx_id).state == COMPLETED and len(s.wallet.hold_calls) == 2


async def test_a_repeated_request_starts_nothing_more():
    s = Service(started_at_once=4)
    tx_id = await s.send(request_id="r1")
    await settle_started(s)
    assert await s.send(request_id="r1") == tx_id
    await settle_started(s)
    assert len(s.wallet.hold_calls) == 1


async def test_an_idle_worker_wakes_up_when_a_transaction_is_queued_for_it():
    s = Service(started_at_once=0)
    stop = asyncio.Event()
    worker = asyncio.create_task(s.service.work(stop, idle_seconds=60))
    await asyncio.sleep(0.01)                       # found nothing: waiting out its minute
    tx_id = await s.send()
    for _ in range(200):
        if s.stored(tx_id).state == COMPLETED:
            break
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(worker, 5)
    assert s.stored(tx_id).state == COMPLETED


# --- watching -----------------------------------------------------------------------------------

async def _watching(s: Service, tx_id: str, viewer: User = ALICE, **kw) -> tuple[asyncio.Task, list[Transaction]]:
    """A watcher of `tx_id` in a task of its own (no unwoken re-reads unless asked), once it has
    started, and the list of what it is sent."""
    seen = []

    async def watching() -> None:
        async for tx in s.service.watch(tx_id, viewer, **{"recheck_seconds": 60, **kw}):
            seen.append(dataclasses.replace(tx))
    watcher = asyncio.create_task(watching())
    await asyncio.sleep(0.01)
    return watcher, seen


async def _watch(s: Service, tx_id: str, viewer: User = ALICE, **kw) -> list[Transaction]:
    """What a watcher of `tx_id` is sent, while a worker runs the queue."""
    watcher, seen = await _watching(s, tx_id, viewer, **kw)
    await s.work_until_idle()
    await asyncio.wait_for(watcher, 2)
    assert s.service.watchers.open == 0
    return seen


async def test_a_watcher_is_sent_the_state_now_and_the_outcome_as_soon_as_it_is_committed(s):
    tx_id = await s.send()
    assert [tx.state for tx in await _watch(s, tx_id)] == [PENDING, COMPLETED]


async def test_a_watcher_is_sent_each_step_of_a_saga_and_the_stream_ends_with_the_outcome(s):
    pay = s.providers.pay

    async def slow_pay(*args, **kw):     # the provider takes a while: the hold is seen before the outcome
        await asyncio.sleep(0.05)
        return await pay(*args, **kw)
    s.providers.pay = slow_pay
    tx_id = await s.create(WITHDRAW, source_wallet="wallets/a")
    seen = await _watch(s, tx_id)
    assert [(tx.state, tx.hold) for tx in seen] == [(PENDING, ""), (PROCESSING, "wallets/a/holds/h1"),
                                                    (COMPLETED, "wallets/a/holds/h1")]


async def test_a_watcher_of_a_saga_given_up_on_is_told_it_was_parked(s):
    s.providers.script.default = ServiceUnavailable("provider down", reason="UPSTREAM_UNAVAILABLE")
    tx_id = await s.create(WITHDRAW, source_wallet="wallets/a")
    watcher, seen = await _watching(s, tx_id, OPERATOR)
    await s.work_until_idle()
    await asyncio.sleep(0.01)
    assert seen[-1].state == PROCESSING and seen[-1].parked.last_error == "provider down"
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher
    assert s.service.watchers.open == 0


async def test_a_watcher_of_a_transaction_that_has_ended_gets_it_once(s):
    tx_id = await s.send()
    await s.work_until_idle()
    assert [tx.state for tx in await _watch(s, tx_id)] == [COMPLETED]


async def test_a_transaction_of_someone_else_cannot_be_watched(s):
    tx_id = await s.create(DEPOSIT, destination_wallet="wallets/a")
    with pytest.raises(NotFound):
        await _watch(s, tx_id, BOB)
    assert s.service.watchers.open == 0


async def test_a_change_that_wakes_no_one_here_is_seen_at_the_next_re_read(s):
    tx_id = await s.send()
    watcher, seen = await _watching(s, tx_id, recheck_seconds=0.02)
    stored = s.stored(tx_id)                 # another instance completes it: no one here is told
    stored.move_to(COMPLETED, s.clock())
    await asyncio.wait_for(watcher, 1)
    assert [tx.state for tx in seen] == [PENDING, COMPLETED]


async def test_a_watch_without_an_outcome_ends_when_its_time_is_up(s):
    tx_id = await s.send()
    seen = []
    with pytest.raises(DeadlineExceeded, match=f"transactions/{tx_id} is still PENDING after 0s of watching"):
        async for tx in s.service.watch(tx_id, ALICE, seconds=0.05, recheck_seconds=0.01):
            seen.append(tx.state)
    assert seen == [PENDING] and s.service.watchers.open == 0


def test_past_its_limit_of_open_watches_a_process_refuses_one_more():
    watchers, opened = Watchers(limit=1, per_user=1), []
    watchers.on_watch(lambda: opened.append(watchers.open))   # what starts listening to other instances
    with watchers.watch("t1"):
        assert opened == [0]
        with pytest.raises(ResourceExhausted, match="1 transactions are watched already"):
            with watchers.watch("t2"):
                pass
    with watchers.watch("t2"):
        assert watchers.open == 1


def test_one_user_may_not_take_every_watch_of_the_process():
    watchers = Watchers(limit=10, per_user=2)
    with watchers.watch("t1", "alice"), watchers.watch("t2", "alice"):
        with pytest.raises(ResourceExhausted, match="alice watches 2 transactions already"):
            with watchers.watch("t3", "alice"):
                pass
        with watchers.watch("t3", "bob"), watchers.watch("t4"), watchers.watch("t5"), watchers.watch("t6"):
            assert watchers.open == 6                      # others, and the operator, still may
    with watchers.watch("t3", "alice"):
        assert watchers.open == 1


async def test_a_shutdown_ends_every_open_watch_at_once_and_opens_no_new_one(s):
    tx_id = await s.send()
    watcher, seen = await _watching(s, tx_id)
    s.service.watchers.close()
    with pytest.raises(ServiceUnavailable, match="shutting down: watch again"):
        await asyncio.wait_for(watcher, 1)
    assert [tx.state for tx in seen] == [PENDING] and s.service.watchers.open == 0
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        await anext(s.service.watch(tx_id, ALICE))
