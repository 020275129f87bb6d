"""The work queue: priorities, leases that expire (a dead worker's item comes back), leases a
busy worker renews, a worker that lost its lease changing nothing, and the retry policy:
backoff that grows with bounded jitter, items parked as dead letters once their attempts or
their age are spent, and replayed with a fresh attempt count."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from services.config_files import ConfigError
from services.domain.errors import NotFound
from services.domain.money import Money
from services.runtime.config import DEFAULT_TOPOLOGY, QueuePolicy, load_topology
from services.runtime.db import Database
from services.runtime.messaging.queue import MAX_AGE, MAX_ATTEMPTS, WorkQueue
from services.transaction.app import MIGRATIONS
from services.transaction.ports import WalletFacts
from services.transaction.tables import parked_work_items, work_items

from fakes import ApprovingCompliance


class AliceUSD:
    """The wallet port of the tests below: every wallet is alice's, in USD, with 100.00."""

    async def describe(self, wallet):
        return WalletFacts("alice", "USD", Money.zero("USD"), Money.parse("USD", "100.00"))

    async def describe_all(self, wallets):
        return [await self.describe(wallet) for wallet in wallets]


class Clock:
    def __init__(self):
        self.now = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def make_queue(db, clock, name: str = "q", **policy) -> WorkQueue:
    return WorkQueue(db, work_items, name, clock=clock, rng=random.Random(5),
                     parked=parked_work_items, policy=QueuePolicy(**policy), worker="worker-1")


@pytest.fixture
def queue(transaction_database):
    clock = Clock()
    return make_queue(transaction_database, clock), transaction_database, clock


def db_count(db, statement) -> int:
    with db.reading() as connection:
        return connection.execute(statement).scalar_one()


def add(db, queue, item: str, priority: int = 0) -> None:
    with db.transaction() as connection:
        queue.enqueue(connection, item, priority)


def test_the_most_urgent_item_first_and_a_dead_workers_item_comes_back(queue):
    q, db, clock = queue
    add(db, q, "low", 0)
    add(db, q, "high", 10)
    first = q.claim()
    assert first.item == "high" and first.attempts == 1
    assert q.claim().item == "low" and q.claim() is None            # both leased
    clock.advance(31)                                                # the first worker died
    again = q.claim()
    assert again.item == "high" and again.attempts == 2


def test_an_item_queued_already_claimed_is_nobody_elses_until_its_lease_runs_out(queue):
    """The first attempt a request starts at once: queued leased to it; if its process dies
    before writing an outcome, the item comes back to the workers as its second attempt."""
    q, db, clock = queue
    with db.transaction() as connection:
        mine = q.enqueue(connection, "saga", 10, leased=True)
    assert mine.item == "saga" and mine.attempts == 1 and mine.priority == 10
    assert q.claim() is None
    assert q.renew(mine)
    clock.advance(31)
    again = q.claim()
    assert again.id == mine.id and again.attempts == 2
    with db.transaction() as connection:
        q.done(connection, again)
    assert q.depth() == 0


def test_anything_waiting_is_an_item_no_worker_holds_and_no_backoff_keeps(queue):
    q, db, clock = queue
    assert not q.anything_waiting()
    with db.transaction() as connection:
        started = q.enqueue(connection, "started", 10, leased=True)
    assert not q.anything_waiting()                                  # a worker holds it
    add(db, q, "queued")
    assert q.anything_waiting()
    taken = q.claim()
    assert taken.item == "queued" and not q.anything_waiting()
    q.retry(taken, "upstream down")                                  # waits out its backoff
    assert not q.anything_waiting()
    clock.advance(q.backoff(taken.attempts).total_seconds() * 2 + 1)
    assert q.anything_waiting()                                      # the retry fell due
    assert started.attempts == 1 and q.claim().item == "queued"      # the started one is still held


def test_a_renewed_lease_keeps_the_item_and_a_lost_lease_changes_nothing(queue):
    q, db, clock = queue
    add(db, q, "saga")
    mine = q.claim()
    for _ in range(3):                          # a long step: 75 s, renewed every 25 s
        clock.advance(25)
        assert q.renew(mine)
        assert q.claim() is None                # nobody else gets it meanwhile
    clock.advance(31)                           # the worker stalled past its lease
    theirs = q.claim()
    assert theirs is not None and theirs.attempts == mine.attempts + 1
    assert not q.renew(mine)                    # the stale worker learns it lost the item
    assert q.retry(mine, "late failure").lost   # and its retry does not push the new holder's lease
    with db.reading() as connection:
        row = connection.execute(select(work_items)).one()
    assert row.attempts == theirs.attempts and row.last_error == ""
    assert row.available_at.replace(tzinfo=dt.timezone.utc) == clock.now + dt.timedelta(seconds=30)


def _id_of(db, item: str) -> int:
    with db.reading() as connection:
        return connection.execute(select(work_items.c.id).where(work_items.c.item == item)).scalar_one()


def test_an_id_given_again_to_a_new_item_is_not_taken_for_the_item_that_had_it(queue):
    """SQLite gives the next row the id of the highest row deleted: what names an item by an id
    read before that item ended must not touch the new item that has the id now."""
    q, db, clock = queue
    with db.transaction() as connection:
        ended = q.enqueue(connection, "ended", leased=True)
    [read] = q.undispatched()                   # a dispatcher reads it, then publishes its message ...
    with db.transaction() as connection:
        q.done(connection, ended)               # ... meanwhile its saga ends,
    add(db, q, "next")                          # and the next item is queued
    if db.engine.dialect.name == "sqlite":
        assert _id_of(db, "next") == read.id    # the id is given again
    q.mark_dispatched([read])                   # ... the dispatcher marks what it published
    assert [i.item for i in q.undispatched()] == ["next"]       # the next item's message is still to send
    claimed = q.claim()
    assert not q.renew(ended) and q.retry(ended, "a stale worker's failure").lost
    with db.reading() as connection:
        row = connection.execute(select(work_items)).one()
    assert (row.item, row.attempts, row.last_error) == ("next", claimed.attempts, "")
    assert row.available_at.replace(tzinfo=dt.timezone.utc) == clock.now + dt.timedelta(seconds=30)


async def test_a_saga_step_longer_than_the_lease_is_run_by_one_worker_only(database_url, pki):
    """Workers renew the lease of the item they work on: a slow wallet (a hold taking five
    leases) does not get the same saga started by the other workers. (The lease leaves room for
    a renewal that waits on a busy machine: three renewals per lease, each may come late.)"""

    from services.runtime.messaging.secure import KeyRing
    from services.runtime.messaging.store import Outbox
    from services.transaction.domain import SEND, Transaction
    from services.transaction.service import TransactionService
    from services.transaction.tables import messaging

    class SlowWallet(AliceUSD):
        holds = 0

        async def hold(self, source, amount, reference, request_id):
            SlowWallet.holds += 1
            await asyncio.sleep(3.0)
            return f"{source}/holds/h1"

    db = Database(database_url, MIGRATIONS)
    db.migrate()
    queue = WorkQueue(db, work_items, "q", lease=dt.timedelta(seconds=0.6), parked=parked_work_items)
    service = TransactionService(db, SlowWallet(), queue, Outbox(messaging, "transaction", lambda topic: [],
                                                                KeyRing.load(pki)),
                                 compliance=ApprovingCompliance())
    draft = Transaction("", SEND, "", "wallets/a", "wallets/b", Money.parse("USD", "1.00"), "", "", None, None, None)
    created = await service.create("r1", "fp", draft, lambda tx: tx.id.encode())
    stop = asyncio.Event()
    workers = [asyncio.create_task(service.work(stop, idle_seconds=0.01)) for _ in range(3)]
    try:
        for _ in range(800):
            if (await service.get(created.decode())).state == "COMPLETED":
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        db.close()
    assert SlowWallet.holds == 1


def test_every_claim_of_an_item_returns_the_trace_context_it_was_queued_in(queue):
    q, db, clock = queue
    context = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "vendor=x"}
    with db.transaction() as connection:
        q.enqueue(connection, "traced", trace_context=context)
    first = q.claim()
    q.retry(first, "upstream down")
    clock.advance(60)
    again = q.claim()
    assert again.attempts == 2
    assert [(c.traceparent, c.tracestate) for c in (first, again)] == [(context["traceparent"], "vendor=x")] * 2


# --- the retry policy -----------------------------------------------------------------------------

def parked_rows(db) -> list:
    with db.reading() as connection:
        return list(connection.execute(select(parked_work_items).order_by(parked_work_items.c.id)))


def fail_until_parked(q, clock, limit: int = 50) -> list:
    """Claim and fail the one item until it is parked; each retry's outcome."""
    outcomes = []
    for _ in range(limit):
        claimed = q.claim()
        assert claimed is not None
        outcomes.append(q.retry(claimed, f"attempt {claimed.attempts}: upstream unavailable"))
        if outcomes[-1].parked:
            return outcomes
        clock.advance(outcomes[-1].delay.total_seconds())
    raise AssertionError("never parked")


def test_the_backoff_doubles_up_to_its_cap_with_jitter_of_at_most_half(queue):
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=12, initial_backoff_seconds=0.5, max_backoff_seconds=20,
                   max_age_seconds=10 ** 6)
    add(db, q, "saga")
    delays = [o.delay.total_seconds() for o in fail_until_parked(q, clock)[:-1]]
    assert len(delays) == 11
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(20, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    assert delays[4] > delays[0] * 4 and max(delays) <= 20       # grows, then stays under the cap
    assert len(set(delays[6:])) == len(delays[6:])               # capped, yet not in step with each other


def test_an_item_is_parked_after_its_attempts_with_an_audit_record_an_alert_and_a_metric(queue, caplog):
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=3, initial_backoff_seconds=1, max_backoff_seconds=5)
    labels = {"queue": "q", "reason": MAX_ATTEMPTS}
    before = REGISTRY.get_sample_value("diboas_work_items_parked_total", labels) or 0
    add(db, q, "saga", priority=7)
    created = clock.now
    with caplog.at_level(logging.ERROR, logger="diboas.queue"):
        outcomes = fail_until_parked(q, clock)
    assert [o.delay is not None for o in outcomes] == [True, True, False]
    (parked,) = q.dead_letters()
    assert outcomes[-1].parked == parked
    assert (parked.item, parked.priority, parked.attempts, parked.reason, parked.error, parked.parked_by) == \
        ("saga", 7, 3, MAX_ATTEMPTS, "attempt 3: upstream unavailable", "worker-1")
    assert parked.queued_at == created and parked.parked_at == clock.now and parked.replayed_at is None
    assert q.depth() == 0
    clock.advance(10 ** 6)
    assert q.claim() is None                                      # never retried again
    assert REGISTRY.get_sample_value("diboas_work_items_parked_total", labels) == before + 1
    (alert,) = [r for r in caplog.records if getattr(r, "alert", None) == "dead_letter"]
    assert alert.item == "saga" and alert.queue == "q" and alert.attempts == 3 and alert.dead_letter == parked.id


def test_an_item_is_parked_once_older_than_the_max_age_whatever_its_attempts(queue):
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=1000, initial_backoff_seconds=1, max_backoff_seconds=10,
                   max_age_seconds=60)
    add(db, q, "saga")
    first = q.retry(q.claim(), "in progress")
    assert first.delay is not None
    clock.advance(59)
    assert q.retry(q.claim(), "still in progress").delay is not None
    clock.advance(2)                                    # past its backoff (at most 2 s), 61 s old
    parked = q.retry(q.claim(), "still in progress after a minute").parked
    assert parked is not None and parked.reason == MAX_AGE and parked.attempts == 3
    assert q.claim() is None and q.depth() == 0


def test_a_deferred_item_waits_out_its_delay_and_its_retry_policy_starts_again(queue):
    """A held transaction's item: deferred again and again for longer than the policy's max age
    and attempts allow, with a failed look (a compliance restart) between deferrals now and
    then, it is never parked, and once it runs it has its whole policy still."""
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=2, max_age_seconds=60, initial_backoff_seconds=1, max_backoff_seconds=1)
    add(db, q, "held")

    def in_hand() -> int:                       # what the backlog counts
        return db_count(db, q.held)
    assert in_hand() == 1
    for look in range(1, 6):                            # 5 minutes held: past max_age and max_attempts
        claimed = q.claim()
        assert in_hand() == 1
        if look % 2:                                    # a failed look, then another: one attempt each
            assert q.retry(claimed, "compliance unavailable").delay is not None
            clock.advance(1)
            claimed = q.claim()
        assert q.defer(claimed, dt.timedelta(seconds=60), "held for a compliance review").delay.total_seconds() == 60
        assert in_hand() == 0                           # waiting for a review: not the workers' backlog
        clock.advance(59)
        assert q.claim() is None and not q.anything_waiting()     # not before its delay
        clock.advance(1)
    assert q.dead_letters() == []
    with db.reading() as connection:
        row = connection.execute(select(work_items)).one()
    assert (row.attempts, row.forgiven, row.last_error) == (8, 8, "held for a compliance review")
    claimed = q.claim()                                 # reviewed: the saga runs, its policy whole
    assert in_hand() == 1
    assert q.retry(claimed, "wallet unavailable").delay is not None and q.dead_letters() == []
    assert in_hand() == 1                               # a retry is the workers' backlog
    clock.advance(1)
    parked = q.retry(q.claim(), "wallet unavailable").parked
    assert (parked.reason, parked.attempts) == (MAX_ATTEMPTS, 10)    # two after the last deferral


def test_a_worker_whose_lease_was_lost_cannot_defer_the_new_holders_item(queue):
    _, db, clock = queue
    add(db, queue[0], "held")
    mine = queue[0].claim()
    clock.advance(31)
    theirs = queue[0].claim()
    assert queue[0].defer(mine, dt.timedelta(seconds=60), "late").lost
    assert queue[0].renew(theirs) and queue[0].claim() is None


def test_a_deferral_by_the_new_holder_gives_no_lost_lease_back(queue):
    """The attempt count is the lease's fencing token: a deferral leaves it as it is, so a worker
    whose lease ran out before another claimed and deferred the item still holds nothing."""
    _, db, clock = queue
    add(db, queue[0], "held")
    mine = queue[0].claim()
    clock.advance(31)
    theirs = queue[0].claim()
    assert not queue[0].defer(theirs, dt.timedelta(seconds=60), "held").lost
    assert not queue[0].renew(mine)
    assert queue[0].retry(mine, "late failure").lost
    assert queue[0].defer(mine, dt.timedelta(seconds=1), "late").lost
    with db.reading() as connection:
        row = connection.execute(select(work_items)).one()
    assert (row.attempts, row.last_error, row.deferred) == (2, "held", True)      # the holder's deferral, untouched


def test_a_worker_that_lost_its_lease_does_not_park_the_new_holders_item(queue):
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=2)
    add(db, q, "saga")
    mine = q.claim()
    clock.advance(31)                                   # it stalled past its lease
    theirs = q.claim()                                  # the last attempt the policy allows
    assert theirs.attempts == 2
    assert q.retry(mine, "late failure").lost          # spent attempts or not: not mine to park
    assert q.dead_letters() == [] and q.depth() == 1
    with db.reading() as connection:
        row = connection.execute(select(work_items)).one()
    assert (row.attempts, row.last_error) == (2, "")   # the new holder's attempt, untouched
    assert q.retry(theirs, "their failure").parked.attempts == 2


def test_a_lost_lease_cannot_park_even_the_item_the_worker_last_had(queue):
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=2, max_age_seconds=10)
    add(db, q, "saga")
    mine = q.claim()
    clock.advance(31)                                   # the lease is lost, and any failure now would park it
    theirs = q.claim()
    assert q.retry(mine, "late failure").lost and q.dead_letters() == []
    assert q.retry(theirs, "their failure").parked.attempts == 2


def test_a_replay_puts_the_item_back_with_fresh_attempts_once_and_keeps_the_audit(queue):
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=2, max_age_seconds=3600)
    other = make_queue(db, clock, name="other", max_attempts=1)
    add(db, q, "saga", priority=9)
    clock.advance(7200)                                  # older than the max age, too
    (parked,) = [o.parked for o in fail_until_parked(q, clock) if o.parked]
    add(db, other, "elsewhere")
    fail_until_parked(other, clock)
    with pytest.raises(NotFound):                        # not a dead letter of this queue
        with db.transaction() as connection:
            q.replay_in(connection, [parked.id, 999], clock.now, "operator")
    with db.transaction() as connection:
        assert q.replay_in(connection, [parked.id], clock.now, "operator") == 1
    with db.transaction() as connection:
        assert q.replay_in(connection, None, clock.now, "operator") == 0       # nothing waits any more
    again = q.claim()
    assert (again.item, again.attempts) == ("saga", 1)
    assert q.retry(again, "one more failure").delay is not None   # its age counts from the replay
    (audit,) = q.dead_letters(include_replayed=True)
    assert audit.replayed_at == clock.now and audit.replayed_by == "operator" and q.dead_letters() == []
    assert len(other.dead_letters()) == 1


def test_an_item_whose_workers_keep_dying_is_parked_at_claim_once_its_attempts_are_spent(queue, caplog):
    """A saga that kills its worker (or its process) every time never reaches `retry`: the claim
    that finds its attempts spent parks it instead of running it again."""
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=3)
    add(db, q, "poison", priority=5)
    add(db, q, "fine")
    for attempt in (1, 2, 3):
        claimed = q.claim()
        assert (claimed.item, claimed.attempts) == ("poison", attempt)
        clock.advance(31)                                   # its worker died: the lease runs out
    with caplog.at_level(logging.ERROR, logger="diboas.queue"):
        after = q.claim()
    assert after.item == "fine"                             # the next item, not the poison again
    (parked,) = q.dead_letters()
    assert (parked.item, parked.attempts, parked.reason) == ("poison", 3, MAX_ATTEMPTS)
    assert "ended without an outcome" in parked.error
    assert [r.item for r in caplog.records if getattr(r, "alert", None) == "dead_letter"] == ["poison"]


def test_a_replayed_item_keeps_the_trace_context_it_was_first_queued_in(queue):
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=1)
    context = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "vendor=x"}
    with db.transaction() as connection:
        q.enqueue(connection, "traced", trace_context=context)
    (parked,) = [o.parked for o in fail_until_parked(q, clock) if o.parked]
    with db.transaction() as connection:           # replayed by an operator, in no trace of the work's own
        q.replay_in(connection, [parked.id], clock.now, "operator")
    again = q.claim()
    assert (again.traceparent, again.tracestate) == (context["traceparent"], "vendor=x")


def test_two_replays_at_once_put_the_item_back_once(queue):
    import threading
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=1)
    add(db, q, "saga")
    assert q.retry(q.claim(), "unavailable").parked
    first_replayed, first_done, counts = threading.Event(), threading.Event(), {}

    def first():
        with db.transaction() as connection:
            counts["first"] = q.replay_in(connection, None, clock.now, "ops-1")
            first_replayed.set()
            first_done.wait(5)                  # still open while the second one starts

    def second():
        with db.transaction() as connection:
            counts["second"] = q.replay_in(connection, None, clock.now, "ops-2")
    one = threading.Thread(target=first)
    one.start()
    assert first_replayed.wait(5)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)                               # it waits for the first to commit
    first_done.set()
    one.join()
    two.join()
    assert sorted(counts.values()) == [0, 1] and q.depth() == 1


def test_the_queue_policy_comes_from_the_topology_per_queue_with_defaults(tmp_path):
    default = load_topology(env={})
    assert default.queue_policy("wallet", "anything") == default.defaults.queue
    assert default.queue_policy("transaction", "financial.transactions").max_attempts >= 1
    env = {"DIBOAS_QUEUE_MAX_ATTEMPTS": "4", "DIBOAS_TRANSACTION_QUEUE_FINANCIAL_TRANSACTIONS_MAX_AGE": "90"}
    topology = load_topology(env=env)
    assert topology.defaults.queue.max_attempts == 4
    policy = topology.queue_policy("transaction", "financial.transactions")
    assert policy.max_age_seconds == 90 and policy.max_attempts == 4            # the default's variable applies
    assert (policy.max_backlog, policy.lease_seconds) == (1000, 30)
    tuned = load_topology(env={"DIBOAS_QUEUE_MAX_BACKLOG": "7", "DIBOAS_QUEUE_LEASE": "4.5"})
    assert tuned.queue_policy("transaction", "financial.transactions").max_backlog == 7
    tuned_queue = make_queue(None, Clock(), **dataclasses.asdict(tuned.defaults.queue))
    assert tuned_queue.lease_seconds == 4.5
    own = tmp_path / "mesh.yaml"
    own.write_text(DEFAULT_TOPOLOGY.read_text().replace("financial.transactions: {}",
                                                        "financial.transactions: {max_attempts: 6}"))
    assert load_topology(own, env=env).queue_policy("transaction", "financial.transactions").max_attempts == 6
    for key, value, problem in [("DIBOAS_QUEUE_MAX_ATTEMPTS", "2.5", "whole number"),
                                ("DIBOAS_QUEUE_MAX_ATTEMPTS", "0", "whole number of at least 1"),
                                ("DIBOAS_QUEUE_MAX_BACKOFF", "0.1", "must not be below"),
                                ("DIBOAS_QUEUE_MAX_BACKLOG", "0", "whole number of at least 1"),
                                ("DIBOAS_QUEUE_LEASE", "0", "greater than zero"),
                                ("DIBOAS_TRANSACTION_QUEUE_FINANCIAL_TRANSACTIONS_MAX_AGE", "x", "not a number")]:
        with pytest.raises(ConfigError, match=problem):
            load_topology(env={key: value})


# --- DeadLetterService over both kinds --------------------------------------------------------------

async def test_dead_letters_of_both_kinds_are_listed_page_by_page_and_replayed_by_kind(queue):
    from sqlalchemy import insert

    from diboas.events.v1 import events_pb2
    from services.domain.errors import InvalidArgument
    from services.runtime.messaging.admin import DeadLetterServicer
    from services.runtime.messaging.relay import MeshTransport, Relay
    from services.runtime.messaging.store import DEAD
    from services.transaction.tables import idempotency_keys, messaging

    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=1)
    with db.transaction() as connection:           # two deliveries the relay gave up on
        for n in (1, 2):
            outbox_id = connection.execute(insert(messaging.outbox).values(
                event_id=f"e{n}", topic="transaction.completed", envelope=b"", created_at=clock.now)).inserted_primary_key[0]
            delivery_id = connection.execute(insert(messaging.deliveries).values(
                outbox_id=outbox_id, subscriber="wallet", state=DEAD, attempts=3, retries=3, next_attempt_at=clock.now,
                last_error="bug", updated_at=clock.now)).inserted_primary_key[0]
            connection.execute(insert(messaging.dead_letters).values(
                delivery_id=delivery_id, event_id=f"e{n}", topic="transaction.completed", subscriber="wallet",
                attempts=3, reason="HANDLER_FAILED", error="bug", created_at=clock.now))
    for n in (1, 2, 3):                           # three parked work items
        add(db, q, f"saga{n}")
        assert q.retry(q.claim(), "unavailable").parked
    relay = Relay(db, messaging, MeshTransport({}), "transaction", clock=clock)
    servicer = DeadLetterServicer(db, relay, idempotency_keys, q)

    async def pages(kind: int = 0) -> list[list[tuple[int, str]]]:
        found, token = [], ""
        while True:
            reply = await servicer.ListDeadLetters(events_pb2.ListDeadLettersRequest(
                page_size=2, page_token=token, kind=kind), None)
            found.append([(d.kind, d.event_id or d.item) for d in reply.dead_letters])
            if not (token := reply.next_page_token):
                return found
    event, item = events_pb2.DEAD_LETTER_KIND_EVENT_DELIVERY, events_pb2.DEAD_LETTER_KIND_WORK_ITEM
    assert await pages() == [[(event, "e1"), (event, "e2")], [(item, "saga1"), (item, "saga2")], [(item, "saga3")]]
    assert await pages(item) == [[(item, "saga1"), (item, "saga2")], [(item, "saga3")]]
    assert await pages(event) == [[(event, "e1"), (event, "e2")]]
    for token in ("x", "w", "w-1"):
        with pytest.raises(InvalidArgument):
            await servicer.ListDeadLetters(events_pb2.ListDeadLettersRequest(page_token=token), None)
    with pytest.raises(InvalidArgument):
        await servicer.ListDeadLetters(events_pb2.ListDeadLettersRequest(kind=7), None)
    # A token resumes only the list it came from: with other filters it is refused, not misread.
    token = (await servicer.ListDeadLetters(events_pb2.ListDeadLettersRequest(page_size=2, kind=item), None)).next_page_token
    for other in (dict(kind=0), dict(kind=event), dict(kind=item, include_replayed=True)):
        with pytest.raises(InvalidArgument) as refused:
            await servicer.ListDeadLetters(events_pb2.ListDeadLettersRequest(page_size=2, page_token=token, **other),
                                           None)
        assert [v.field for v in refused.value.violations] == ["page_token"]
    # Replay ids are ids this service could have given out (an Integer column), a bounded number at once.
    for ids in ([2**31], [0], [-5], list(range(1, 1002))):
        with pytest.raises(InvalidArgument) as refused:
            await servicer.ReplayDeadLetters(events_pb2.ReplayDeadLettersRequest(request_id="bad", ids=ids), None)
        assert [v.field for v in refused.value.violations] == ["ids"]

    async def replay(request_id: str, **fields) -> int:
        return (await servicer.ReplayDeadLetters(events_pb2.ReplayDeadLettersRequest(
            request_id=request_id, **fields), None)).replayed
    (first_event,) = [d.id for d in relay.dead_letters() if d.event_id == "e1"]
    assert await replay("r1", ids=[first_event]) == 1              # ids without a kind: an event's
    assert [p.item for p in q.dead_letters()] == ["saga1", "saga2", "saga3"]
    saga2 = [p.id for p in q.dead_letters() if p.item == "saga2"]
    assert await replay("r2", ids=saga2, kind=item) == 1
    assert await replay("r2", ids=saga2, kind=item) == 1           # a repeat answers the same, does nothing
    assert [p.item for p in q.dead_letters()] == ["saga1", "saga3"] and q.depth() == 1
    assert await replay("r3", all=True) == 3                       # every kind: e2, saga1, saga3
    assert q.dead_letters() == [] and relay.dead_letters() == [] and q.depth() == 3


async def test_a_parked_saga_keeps_its_state_and_sends_nothing_and_a_refusal_still_fails_at_once(transaction_database, pki):
    """The wallet answers UNAVAILABLE to one SEND's hold (it may have happened: parked after the
    policy's attempts, still PENDING, no event) and refuses the other's (FAILED at once)."""

    from sqlalchemy import func

    from services.domain.errors import FailedPrecondition, ServiceUnavailable
    from services.runtime.messaging.secure import KeyRing
    from services.runtime.messaging.store import Outbox
    from services.transaction.domain import SEND, Transaction
    from services.transaction.service import TransactionService
    from services.transaction.tables import messaging

    class Wallet(AliceUSD):
        holds: list[str] = []

        async def hold(self, source, amount, reference, request_id):
            Wallet.holds.append(request_id)
            if amount.text == "1.00":
                raise ServiceUnavailable("the wallet is unreachable", reason="UPSTREAM_UNAVAILABLE")
            raise FailedPrecondition("insufficient funds", reason="INSUFFICIENT_FUNDS")

    queue = WorkQueue(transaction_database, work_items, "financial.transactions", parked=parked_work_items,
                      policy=QueuePolicy(max_attempts=3, initial_backoff_seconds=0.01, max_backoff_seconds=0.02))
    service = TransactionService(transaction_database, Wallet(), queue, Outbox(messaging, "transaction", lambda topic: ["wallet"],
                                                                   KeyRing.load(pki)),
                                 compliance=ApprovingCompliance())

    async def create(amount: str) -> str:
        draft = Transaction("", SEND, "", "wallets/a", "wallets/b", Money.parse("USD", amount), "", "", None, None, None)
        return (await service.create(f"r{amount}", "fp", draft, lambda tx: tx.id.encode())).decode()
    stuck, refused = await create("1.00"), await create("2.00")
    stop = asyncio.Event()
    worker = asyncio.create_task(service.work(stop, idle_seconds=0.01))
    try:
        for _ in range(500):
            if (await service.get(stuck)).parked and (await service.get(refused)).state == "FAILED":
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await worker
    parked, failed = await service.get(stuck), await service.get(refused)
    assert (parked.state, parked.failure_reason, parked.parked.attempts) == ("PENDING", "", 3)
    assert parked.parked.last_error == "the wallet is unreachable" and parked.parked.reason == MAX_ATTEMPTS
    assert failed.state == "FAILED" and failed.parked is None
    assert Wallet.holds.count(f"{stuck}:hold") == 3 and Wallet.holds.count(f"{refused}:hold") == 1
    with transaction_database.reading() as connection:
        topics = [row.topic for row in connection.execute(select(messaging.outbox.c.topic))]
        assert topics == ["transaction.failed"]                  # nothing for the parked one
        assert connection.execute(select(func.count()).select_from(work_items)).scalar_one() == 0


async def test_a_worker_outlives_a_database_that_fails_while_it_reschedules(transaction_database, pki):
    """An attempt fails and its reschedule fails too (the database is away): the worker goes on
    with the next item, and the first comes back once its lease runs out."""

    from services.domain.errors import ServiceUnavailable
    from services.runtime.messaging.secure import KeyRing
    from services.runtime.messaging.store import Outbox
    from services.transaction.domain import SEND, Transaction
    from services.transaction.service import TransactionService
    from services.transaction.tables import messaging

    class Wallet(AliceUSD):
        refused_once = False

        async def hold(self, source, amount, reference, request_id):
            if amount.text == "1.00" and not Wallet.refused_once:
                Wallet.refused_once = True
                raise ServiceUnavailable("the wallet is unreachable", reason="UPSTREAM_UNAVAILABLE")
            return f"{source}/holds/{request_id}"

    queue = WorkQueue(transaction_database, work_items, "financial.transactions", lease=dt.timedelta(seconds=0.5),
                      parked=parked_work_items)
    reschedules = []
    real_retry = queue.retry

    def retry(claimed, error):
        reschedules.append(claimed.item)
        if len(reschedules) == 1:
            raise ServiceUnavailable("database is unavailable", reason="DATABASE_UNAVAILABLE")
        return real_retry(claimed, error)
    queue.retry = retry
    service = TransactionService(transaction_database, Wallet(), queue, Outbox(messaging, "transaction", lambda topic: ["wallet"],
                                                                   KeyRing.load(pki)),
                                 compliance=ApprovingCompliance())

    async def create(amount: str) -> str:
        draft = Transaction("", SEND, "", "wallets/a", "wallets/b", Money.parse("USD", amount), "", "", None, None, None)
        return (await service.create(f"r{amount}", "fp", draft, lambda tx: tx.id.encode())).decode()
    first = await create("1.00")
    stop = asyncio.Event()
    worker = asyncio.create_task(service.work(stop, idle_seconds=0.01))
    try:
        await asyncio.sleep(0.2)                       # the first attempt failed, and so did its reschedule
        second = await create("2.00")
        for _ in range(300):
            if {(await service.get(t)).state for t in (first, second)} == {"COMPLETED"}:
                break
            await asyncio.sleep(0.01)
        assert not worker.done(), "the worker ended"
    finally:
        stop.set()
        await worker
    assert [(await service.get(t)).state for t in (first, second)] == ["COMPLETED", "COMPLETED"]
    assert reschedules == [first]


async def test_a_claim_through_database_run_that_parks_alerts_once_its_park_is_committed(queue, caplog):
    """As the workers claim: in a job of Database.run (on SQLite, in a batch). An item whose
    attempts all ended with their lease running out is parked by the next claim; the alert line
    comes once the park is committed."""
    _, db, clock = queue
    q = make_queue(db, clock, max_attempts=2)
    add(db, q, "orphan")
    for _ in range(2):
        assert (await db.run(q.claim)).item == "orphan"
        clock.advance(31)                                            # its worker died: the lease ran out
    seen_committed = []

    def committed_when_alerted(record: logging.LogRecord) -> bool:
        if getattr(record, "alert", None) == "dead_letter":
            seen_committed.append(len(parked_rows_elsewhere(db)))
        return True
    logging.getLogger("diboas.queue").addFilter(committed_when_alerted)
    try:
        with caplog.at_level(logging.ERROR, logger="diboas.queue"):
            assert await db.run(q.claim) is None
    finally:
        logging.getLogger("diboas.queue").removeFilter(committed_when_alerted)
    assert seen_committed == [1], "the alert came before its park was committed, or not once"


def parked_rows_elsewhere(db) -> list:
    """The parked rows another connection sees (what is committed), from any thread."""
    with db._reader.connect() as connection:
        return list(connection.execute(select(parked_work_items)))
