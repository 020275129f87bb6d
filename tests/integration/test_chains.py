"""Multi-chain coordination over the simulated chains (real asyncio timing, real faults): the
cross-chain transfer saga on a real database (SQLite and PostgreSQL), with a failure at every
step, lost answers and a crash; consolidated status with chains down; chain health."""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from services.blockchain.adapters import ChainRejected
from services.blockchain.app import MIGRATIONS
from services.blockchain.coordinator import TransferCoordinator
from services.blockchain.registry import DEGRADED, HEALTHY, UNAVAILABLE, UNKNOWN, ChainRegistry
from services.blockchain.simulator import SimulatedChain, default_chains
from services.blockchain.tables import cross_chain_transfers
from services.blockchain.transfers import BRIDGE, COMPENSATED, COMPLETED, FAILED, IN_PROGRESS, SOURCE, TARGET
from services.domain.errors import AlreadyExists, InvalidArgument, NotFound
from services.domain.money import Money
from services.runtime.db import Database

HASH = re.compile(r"0x[0-9a-f]{64}")


def usdc(text: str) -> Money:
    return Money.parse("USDC", text)


def make_chains() -> dict[str, SimulatedChain]:
    chains = {c.name: c for c in default_chains(seed=7)}
    for chain in chains.values():
        chain.latency, chain.latency_jitter = 0.005, 0.0
    return chains


# The simulated chains' books, by key.

def _open(chain: SimulatedChain, op: str, undo: str) -> dict[str, Money]:
    return {key: e.amount for (kind, key), e in chain.entries.items()
            if kind == op and not e.reverted and (undo, key) not in chain.entries}


def locked(chain: SimulatedChain) -> dict[str, Money]:
    """Locks not refunded: money that left a user on this chain."""
    return _open(chain, "lock", "unlock")


def relayed(chain: SimulatedChain) -> dict[str, Money]:
    """Bridge messages not cancelled."""
    return _open(chain, "relay", "revert_relay")


def minted(chain: SimulatedChain) -> dict[str, Money]:
    """Mints: money that arrived on this chain."""
    return {key: e.amount for (kind, key), e in chain.entries.items() if kind == "mint" and not e.reverted}


def refunded(chain: SimulatedChain) -> dict[str, Money]:
    return {key: e.amount for (kind, key), e in chain.entries.items() if kind == "unlock"}


def fees_paid(chain: SimulatedChain) -> Decimal:
    return sum((e.fee for e in chain.entries.values()), Decimal(0))


@dataclass
class World:
    chains: dict[str, SimulatedChain]
    registry: ChainRegistry
    coordinator: TransferCoordinator
    db: Database

    @property
    def eth(self) -> SimulatedChain:
        return self.chains["ethereum"]

    @property
    def polygon(self) -> SimulatedChain:
        return self.chains["polygon"]

    def rows(self) -> int:
        with self.db.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(cross_chain_transfers)).scalar_one()

    def assert_balanced(self) -> None:
        """Nothing left locked, no bridge message open, nothing minted: no money moved."""
        for chain in self.chains.values():
            assert (locked(chain), relayed(chain), minted(chain)) == ({}, {}, {}), chain.name


@pytest.fixture
async def world(database_url):
    db = Database(database_url, MIGRATIONS)
    db.migrate()
    chains = make_chains()
    registry = ChainRegistry(chains.values(), call_timeout=0.3)
    coordinator = TransferCoordinator(db, registry, step_timeout=0.2, compensation_attempts=5, compensation_backoff=0.01)
    yield World(chains, registry, coordinator, db)
    await coordinator.driver.close(grace=0)
    db.close()


async def transfer(world: World, request_id: str = "t1", source: str = "ethereum", target: str = "polygon",
                   amount: str = "25.00", address: str = "0xreceiver"):
    return await world.coordinator.execute(request_id, source, target, usdc(amount), address)


async def until(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --- the saga ------------------------------------------------------------------------------------

async def test_a_transfer_locks_relays_and_mints_once_with_three_references(world):
    t = await transfer(world)
    assert (t.state, t.current_step, t.failure_reason, t.compensations) == (COMPLETED, TARGET, "", [])
    assert [(tx.chain, bool(HASH.fullmatch(tx.hash)), tx.block > 0) for tx in (t.source_tx, t.bridge_tx, t.target_tx)] == [
        ("ethereum", True, True), ("ethereum", True, True), ("polygon", True, True)]
    assert len({t.source_tx.hash, t.bridge_tx.hash, t.target_tx.hash}) == 3
    assert t.completed_at is not None and t.name == f"crossChainTransfers/{t.id}"
    assert world.eth.journal == [("lock", t.key(SOURCE)), ("relay", t.key(BRIDGE))]
    assert world.polygon.journal == [("mint", t.key(TARGET))]
    assert minted(world.polygon) == {t.key(TARGET): usdc("25.00")}
    assert locked(world.eth) == {t.key(SOURCE): usdc("25.00")}
    stored = await world.coordinator.get(t.id)
    assert (stored.state, stored.source_tx, stored.bridge_tx, stored.target_tx) == (COMPLETED, t.source_tx, t.bridge_tx,
                                                                                    t.target_tx)


@pytest.mark.parametrize("step,chain,undone", [
    (SOURCE, "ethereum", []),
    (BRIDGE, "ethereum", [SOURCE]),
    (TARGET, "polygon", [BRIDGE, SOURCE]),
])
async def test_a_failing_step_is_compensated_and_no_money_moves(world, step, chain, undone):
    world.chains[chain].faults.failing_steps = frozenset({step})
    t = await transfer(world)
    assert (t.state, t.current_step) == (COMPENSATED, step)
    assert t.failure_reason.startswith(f"{step} step on chains/{chain} failed: chains/{chain} reverted")
    assert [c.step for c in t.compensations] == undone
    assert all(c.transaction.chain == "ethereum" and c.reason == t.failure_reason for c in t.compensations)
    world.assert_balanced()
    assert refunded(world.eth) == ({t.key(SOURCE): usdc("25.00")} if undone else {})
    # the reverted transaction is on its chain: FAILED once its block is there
    world.chains[chain].skew += world.chains[chain].block_time
    reverted = await world.registry.transaction_status(HASH.search(t.failure_reason).group())
    assert (reverted.status, reverted.chain) == ("FAILED", chain)
    assert (await world.coordinator.get(t.id)).compensations == t.compensations


async def test_a_repeated_request_returns_the_same_transfer_and_does_nothing_twice(world):
    first = await transfer(world)
    again = await transfer(world)
    assert (again.id, again.state, again.target_tx) == (first.id, COMPLETED, first.target_tx)
    together = await asyncio.gather(*(transfer(world, "t2", amount="3.50") for _ in range(5)))
    assert len({t.id for t in together}) == 1 and {t.state for t in together} == {COMPLETED}
    assert len(world.eth.journal) == len(set(world.eth.journal)) == 4
    assert len(world.polygon.journal) == len(set(world.polygon.journal)) == 2
    with pytest.raises(AlreadyExists, match="request_id 't1' was already used"):
        await transfer(world, amount="26.00")
    assert world.rows() == 2


async def test_a_mint_whose_answer_was_lost_is_asked_again_and_completes_once(world):
    world.polygon.faults.timeout_rate = 1.0
    running = asyncio.create_task(transfer(world))
    await until(lambda: minted(world.polygon))          # the mint landed; its answer will never come
    world.polygon.faults.timeout_rate = 0.0
    t = await running
    assert t.state == COMPLETED and refunded(world.eth) == {}
    assert world.polygon.journal == [("mint", t.key(TARGET))]


async def test_a_mint_that_never_answers_is_not_refunded_but_asked_again_later(world):
    world.polygon.faults.timeout_rate = 1.0
    t = await transfer(world)
    # it may have happened (it did): refunding the lock could pay twice, so the transfer waits
    assert (t.state, t.current_step, t.compensations, t.failure_reason) == (IN_PROGRESS, TARGET, [], "")
    assert "asked again later" in t.last_error
    assert locked(world.eth) and minted(world.polygon) and refunded(world.eth) == {}
    world.polygon.faults.timeout_rate = 0.0
    assert await world.coordinator.driver.resume_once() == 1
    t = await world.coordinator.get(t.id)
    assert t.state == COMPLETED and t.last_error == ""
    assert world.polygon.journal == [("mint", t.key(TARGET))] and refunded(world.eth) == {}


async def test_a_lock_whose_answer_never_comes_is_refunded(world):
    lock = world.eth.lock

    async def answer_lost(amount, key):
        await lock(amount, key)
        await asyncio.sleep(3600)
    world.eth.lock = answer_lost
    t = await transfer(world)
    assert (t.state, t.current_step) == (COMPENSATED, SOURCE)
    assert "asked once more" in t.failure_reason
    assert [c.step for c in t.compensations] == [SOURCE]          # refunded although it never answered
    world.assert_balanced()


async def test_a_source_lock_that_never_happened_is_voided_so_it_cannot_land_later(world):
    held = asyncio.Event()
    lock = world.eth.lock

    async def in_flight(amount, key):
        await held.wait()                 # e.g. stuck in the mempool
        return await lock(amount, key)
    world.eth.lock = in_flight
    t = await transfer(world)
    assert (t.state, t.current_step, t.compensations) == (COMPENSATED, SOURCE, [])
    held.set()                            # the lock finally reaches the chain: refused
    with pytest.raises(ChainRejected, match="cancelled by a compensation"):
        await lock(t.amount, t.key(SOURCE))
    world.assert_balanced()


async def test_a_compensation_that_cannot_finish_leaves_the_transfer_failed_for_an_operator(world):
    relay = world.eth.relay

    async def chain_breaks(amount, key, target):
        world.eth.faults.error_rate = 1.0   # the source chain goes down right after the lock
        return await relay(amount, key, target)
    world.eth.relay = chain_breaks
    t = await transfer(world)
    assert (t.state, t.current_step, t.compensations) == (FAILED, BRIDGE, [])
    assert "refunding the lock" in t.failure_reason and "an operator must finish" in t.failure_reason
    assert locked(world.eth) == {t.key(SOURCE): usdc("25.00")}   # what the operator has to refund
    assert minted(world.polygon) == {}


async def test_a_drive_killed_mid_step_resumes_without_repeating_what_was_done(world):
    relay, hung = world.eth.relay, asyncio.Event()

    async def hang_once(amount, key, target):
        world.eth.relay = relay
        hung.set()
        await asyncio.sleep(3600)
    world.eth.relay = hang_once
    running = asyncio.create_task(transfer(world))
    await hung.wait()
    await world.coordinator.driver.close(grace=0)       # the process dies: its drive is cancelled mid-step
    with pytest.raises(asyncio.CancelledError):
        await running
    (key,) = locked(world.eth)
    transfer_id = key.split(":")[0]
    assert (await world.coordinator.get(transfer_id)).state == IN_PROGRESS
    restarted = TransferCoordinator(world.db, world.registry, step_timeout=0.2)
    assert await restarted.driver.resume_once() == 1
    t = await restarted.get(transfer_id)
    assert t.state == COMPLETED
    assert world.eth.journal == [("lock", t.key(SOURCE)), ("relay", t.key(BRIDGE))]   # the lock was not repeated
    assert await restarted.driver.resume_once() == 0


async def test_bad_requests_are_refused_and_change_nothing(world):
    cases = [
        (dict(target="ethereum"), InvalidArgument, "target_chain: must differ from source_chain"),
        (dict(target="bitcoin"), NotFound, "chains/bitcoin does not exist (known: ethereum, polygon, solana)"),
        (dict(amount="0"), InvalidArgument, "amount.amount: must be greater than zero"),
        (dict(address=""), InvalidArgument, "destination_address: is required"),
        (dict(address="0x a"), InvalidArgument, "destination_address: must be"),
        (dict(request_id=""), InvalidArgument, "request_id: is required"),
    ]
    for changes, error, message in cases:
        with pytest.raises(error) as caught:
            await transfer(world, **changes)
        assert caught.value.message.startswith(message) or message in caught.value.message, caught.value.message
    with pytest.raises(NotFound, match="crossChainTransfers/nope does not exist"):
        await world.coordinator.get("nope")
    assert world.rows() == 0 and all(not c.journal for c in world.chains.values())


# --- consolidated status -------------------------------------------------------------------------

@pytest.fixture
def registry() -> ChainRegistry:
    return ChainRegistry(make_chains().values(), call_timeout=0.2, slow_seconds=0.05)


async def test_a_transaction_is_found_on_its_chain_and_final_after_enough_confirmations(registry):
    eth = registry.adapters["ethereum"]
    tx = await eth.lock(usdc("1.00"), "k")
    report = await registry.transaction_status(tx.hash)
    assert (report.status, report.chain, report.confirmations, report.finalized, report.partial) == (
        "PENDING", "ethereum", 0, False, False)
    assert [(a.chain, a.answered, a.status.found) for a in report.answers] == [
        ("ethereum", True, True), ("polygon", True, False), ("solana", True, False)]
    eth.skew += 2.0                         # one block: in it
    report = await registry.transaction_status(tx.hash)
    assert (report.status, report.confirmations, report.required_confirmations, report.finalized) == (
        "CONFIRMING", 1, 12, False)
    eth.skew += 11 * 2.0                    # 11 more: 12 confirmations, final
    report = await registry.transaction_status(tx.hash)
    assert (report.status, report.confirmations, report.finalized) == ("FINALIZED", 12, True)


async def test_chains_that_fail_or_hang_make_a_partial_answer_not_an_error(registry):
    tx = await registry.adapters["ethereum"].lock(usdc("1.00"), "k")
    registry.adapters["polygon"].faults.error_rate = 1.0
    registry.adapters["solana"].faults.timeout_rate = 1.0
    started = time.monotonic()
    report = await registry.transaction_status(tx.hash)
    assert time.monotonic() - started < 0.5
    assert (report.status, report.chain, report.partial) == ("PENDING", "ethereum", True)
    errors = {a.chain: a.error for a in report.answers if not a.answered}
    assert errors == {"polygon": "chains/polygon answered with an error",
                      "solana": "chains/solana gave no answer within 0.2s"}
    unknown = await registry.transaction_status("0x" + "ab" * 32)
    assert (unknown.status, unknown.partial) == ("NOT_FOUND", True)


async def test_an_unknown_hash_is_not_found_and_with_every_chain_down_unknown(registry):
    report = await registry.transaction_status("0x" + "00" * 32)
    assert (report.status, report.chain, report.partial) == ("NOT_FOUND", "", False)
    for chain in registry.adapters.values():
        chain.faults.error_rate = 1.0
    report = await registry.transaction_status("0x" + "00" * 32)
    assert (report.status, report.partial) == (UNKNOWN, True)
    assert [a.answered for a in report.answers] == [False, False, False]


async def test_status_asks_only_the_chains_named_and_refuses_unknown_ones(registry):
    report = await registry.transaction_status("0x01", ["solana", "solana"])
    assert [a.chain for a in report.answers] == ["solana"]
    with pytest.raises(NotFound, match="chains/bitcoin does not exist"):
        await registry.transaction_status("0x01", ["solana", "bitcoin"])
    with pytest.raises(InvalidArgument, match="transaction_hash: is required"):
        await registry.transaction_status("")


async def test_health_follows_the_checks_and_the_breaker(registry):
    assert registry.state("ethereum") == "UNSPECIFIED"
    stop = asyncio.Event()
    watching = asyncio.create_task(registry.watch(stop, interval=0.05))
    await until(lambda: all(h.checked for h in registry.health.values()))
    assert {n: registry.state(n) for n in registry.names} == dict.fromkeys(registry.names, HEALTHY)
    registry.adapters["polygon"].faults.error_rate = 1.0
    registry.adapters["solana"].faults.extra_latency = 0.08
    await until(lambda: registry.state("polygon") == UNAVAILABLE and registry.state("solana") == DEGRADED)
    assert registry.health["ethereum"].latest_block > 0 and registry.state("ethereum") == HEALTHY
    stop.set()
    await watching
    registry.adapters["ethereum"].faults.error_rate = 1.0      # failing calls open the breaker...
    for _ in range(5):
        await registry.transaction_status("0x01", ["ethereum"])
    assert registry.state("ethereum") == UNAVAILABLE
    report = await registry.transaction_status("0x01", ["ethereum"])
    assert "circuit breaker open" in report.answers[0].error       # ...which then fails fast


# --- the simulator -------------------------------------------------------------------------------

async def test_simulated_transactions_are_idempotent_by_key_and_unique_per_chain():
    chains = make_chains()
    eth, sol = chains["ethereum"], chains["solana"]
    first = await eth.lock(usdc("5.00"), "k")
    assert await eth.lock(usdc("5.00"), "k") == first and eth.journal == [("lock", "k")]
    other = await sol.lock(usdc("5.00"), "k")
    assert other.hash != first.hash and other.chain == "solana"
    assert first.block == eth.height() + 1 or first.block == eth.height()   # included in the next block
    assert await eth.unlock("k") == await eth.unlock("k") and locked(eth) == {}
    assert await eth.revert_relay("never") is None
    with pytest.raises(ChainRejected, match="cancelled"):
        await eth.relay(usdc("5.00"), "never", "solana")
    before = sol.height()
    sol.skew += 2.0
    assert sol.height() - before in (5, 6)                         # 0.4 s blocks
    assert fees_paid(eth) == Decimal("0.00042") * 2


async def test_simulated_books_outlive_a_restart(tmp_path):
    eth = default_chains(seed=1, books_dir=tmp_path)[0]
    tx = await eth.lock(usdc("5.00"), "k")
    await eth.unlock("missing")
    again = default_chains(seed=1, books_dir=tmp_path)[0]
    assert locked(again) == {"k": usdc("5.00")} and ("lock", "missing") in again.voided
    assert await again.lock(usdc("5.00"), "k") == tx and again.journal == [("lock", "k")]
