"""The cross-chain transfer saga over hand-written fakes: chains that do what each test scripts
(answer, refuse, fail, or take effect and then lose the answer), an in-memory store of transfers
and a fake clock. A failure at every step is compensated; an ambiguous step is asked again with
the same key and never takes effect twice; the mint is never undone."""
from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections import Counter

import pytest

from services.blockchain.adapters import ChainAdapter, ChainRejected, ChainTimeout, ChainUnavailable, TxStatus
from services.blockchain.driver import TransferDriver
from services.blockchain.saga import COMPENSATION_ATTEMPTS, TransferSaga
from services.blockchain.transfers import (
    BRIDGE,
    COMPENSATED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    NO_STEP,
    PENDING,
    SOURCE,
    STEPS,
    TARGET,
    ChainTx,
    StepOutcome,
    Transfer,
)
from services.domain.errors import NotFound
from services.domain.money import Money

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
OPERATION = {SOURCE: "lock", BRIDGE: "relay", TARGET: "mint"}
UNDO = {SOURCE: "unlock", BRIDGE: "revert_relay"}


class FakeClock:
    def __init__(self):
        self.now, self.slept = T0, []

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(milliseconds=1)
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


class FakeChain(ChainAdapter):
    """A chain whose calls do what `script[operation]` says, one entry a call (then "ok"):
    "ok"; "reject" (refused for good); "down" (not executed); "lost" (takes effect, then the
    answer is lost: ChainTimeout); "silent" (not executed, and no answer: ChainTimeout).
    Every operation is idempotent by key, as the port requires."""

    display_name, native_currency, required_confirmations, block_time = "Fake", "ETH", 1, 1.0

    def __init__(self, name: str):
        self.name = name
        self.script: dict[str, list[str]] = {}
        self.calls: list[tuple[str, str]] = []          # (operation, key), every call
        self.effects: Counter = Counter()                # (operation, key) -> times it took effect
        self.done: dict[tuple[str, str], ChainTx] = {}   # what took effect, by (operation, key)
        self.void: set[str] = set()                      # keys undone before anything was done under them

    def _behaviour(self, operation: str) -> str:
        queue = self.script.get(operation, [])
        return queue.pop(0) if queue else "ok"

    async def _do(self, operation: str, key: str, effect: bool = True) -> ChainTx | None:
        self.calls.append((operation, key))
        await asyncio.sleep(0)                            # a real chain call lets other tasks run
        behaviour = self._behaviour(operation)
        if behaviour == "reject":
            raise ChainRejected(f"{operation} {key} reverted")
        if behaviour in ("down", "silent"):
            raise (ChainUnavailable if behaviour == "down" else ChainTimeout)(f"{self.name} {behaviour}")
        if (operation, key) not in self.done and effect:
            self.effects[operation, key] += 1
            self.done[operation, key] = ChainTx(self.name, f"0x{operation}-{key}", len(self.done) + 1)
        if behaviour == "lost":
            raise ChainTimeout(f"{operation} {key}: no answer")
        return self.done.get((operation, key))

    async def lock(self, amount: Money, key: str) -> ChainTx:
        if key in self.void:
            raise ChainRejected(f"key {key} is void")
        return await self._do("lock", key)

    async def relay(self, amount: Money, key: str, target: str) -> ChainTx:
        if key in self.void:
            raise ChainRejected(f"key {key} is void")
        return await self._do("relay", key)

    async def mint(self, amount: Money, key: str, destination_address: str) -> ChainTx:
        return await self._do("mint", key)

    async def unlock(self, key: str) -> ChainTx | None:
        return await self._undo("unlock", "lock", key)

    async def revert_relay(self, key: str) -> ChainTx | None:
        return await self._undo("revert_relay", "relay", key)

    async def _undo(self, operation: str, undoes: str, key: str) -> ChainTx | None:
        if (undoes, key) not in self.done:
            self.calls.append((operation, key))
            self._behaviour(operation)
            self.void.add(key)
            return None
        return await self._do(operation, key)

    async def latest_block(self) -> int:
        return len(self.done)

    async def status(self, tx_hash: str) -> TxStatus:
        return TxStatus(False, "NOT_FOUND", 0, 0)

    def outstanding(self) -> dict[str, int]:
        """What is still in effect: locks not refunded, relays not cancelled, mints."""
        return {op: sum(1 for (o, key) in self.done if o == op and (UNDO_OF.get(op), key) not in self.done)
                for op in ("lock", "relay", "mint")}


UNDO_OF = {"lock": "unlock", "relay": "revert_relay"}


class FakeChains:
    """The chains port: a call goes straight to the fake chain; `guarded` is recorded."""

    def __init__(self, *chains: FakeChain):
        self.chains = {c.name: c for c in chains}
        self.unguarded: list[str] = []

    async def call(self, name, operation, timeout=None, guarded=True):
        if not guarded:
            self.unguarded.append(name)
        return await operation(self.chains[name])


class FakeTransfers:
    """The store: a copy of each transfer as saved, and every saved (state, step) in order."""

    def __init__(self):
        self.rows: dict[str, Transfer] = {}
        self.history: list[tuple[str, str, bool]] = []

    async def save(self, t: Transfer) -> None:
        self.rows[t.id] = copy.deepcopy(t)
        self.history.append((t.state, t.current_step, t.compensating))

    async def get(self, transfer_id: str) -> Transfer | None:
        t = self.rows.get(transfer_id)
        return copy.deepcopy(t) if t else None

    async def unfinished(self) -> list[str]:
        return [i for i, t in self.rows.items() if t.state not in (COMPLETED, COMPENSATED, FAILED)]


class World:
    def __init__(self, compensation_attempts: int = COMPENSATION_ATTEMPTS):
        self.source, self.target = FakeChain("ethereum"), FakeChain("polygon")
        self.chains, self.store, self.clock = FakeChains(self.source, self.target), FakeTransfers(), FakeClock()
        self.saga = TransferSaga(self.chains, self.store, compensation_attempts=compensation_attempts,
                                 compensation_backoff=0.05, clock=self.clock, sleep=self.clock.sleep)

    def new(self, transfer_id: str = "t1") -> Transfer:
        t = Transfer(transfer_id, "ethereum", "polygon", Money.parse("USDC", "25.00"), "0xreceiver", "", PENDING,
                     NO_STEP, T0, T0)
        self.store.rows[t.id] = copy.deepcopy(t)
        return t

    def chain_of(self, step: str) -> FakeChain:
        return self.target if step == TARGET else self.source

    def calls(self, operation: str) -> list[str]:
        return [key for chain in (self.source, self.target) for op, key in chain.calls if op == operation]

    def effects(self, operation: str) -> int:
        return sum(n for chain in (self.source, self.target) for (op, _), n in chain.effects.items() if op == operation)


async def test_a_transfer_takes_each_step_once_and_saves_each_before_the_next():
    world = World()
    t = await world.saga.advance(world.new())
    assert t.state == COMPLETED and t.compensations == [] and t.failure_reason == ""
    assert [t.source_tx.chain, t.bridge_tx.chain, t.target_tx.chain] == ["ethereum", "ethereum", "polygon"]
    assert [world.effects(OPERATION[s]) for s in STEPS] == [1, 1, 1]
    assert world.calls("lock") == ["t1:source"] and world.calls("relay") == ["t1:bridge"]
    assert world.calls("mint") == ["t1:target"]
    # started, then done, for each step, then finished: a crash anywhere resumes from the last save
    assert world.store.history == [(IN_PROGRESS, SOURCE, False)] * 2 + [(IN_PROGRESS, BRIDGE, False)] * 2 \
        + [(IN_PROGRESS, TARGET, False)] * 2 + [(COMPLETED, TARGET, False)]
    assert world.store.rows["t1"] == t


@pytest.mark.parametrize("failure", ["reject", "down"])
@pytest.mark.parametrize("step", STEPS)
async def test_a_failure_at_every_step_is_compensated_latest_first(step, failure):
    world = World()
    world.chain_of(step).script[OPERATION[step]] = [failure]
    t = await world.saga.advance(world.new())
    assert t.state == COMPENSATED
    assert t.failure_reason.startswith(f"{step} step on chains/{world.chain_of(step).name} failed")
    done_before = list(STEPS[:STEPS.index(step)])
    assert [c.step for c in t.compensations] == list(reversed(done_before))
    assert all(c.reason == t.failure_reason for c in t.compensations)
    assert world.effects("mint") == 0
    assert world.source.outstanding() == {"lock": 0, "relay": 0, "mint": 0}
    # the failed step was answered (a refusal, or not executed): it is not undone itself
    assert not t.outcome_unknown and world.calls(UNDO.get(step, "none")) == []
    assert world.chains.unguarded == ["ethereum"] * len(done_before)        # refunds bypass the breaker
    assert world.store.rows["t1"] == t


@pytest.mark.parametrize("step", STEPS)
async def test_an_ambiguous_step_is_asked_again_with_its_key_and_takes_effect_once(step):
    world = World()
    world.chain_of(step).script[OPERATION[step]] = ["lost"]       # it happened, the answer did not come
    t = await world.saga.advance(world.new())
    assert t.state == COMPLETED
    assert world.calls(OPERATION[step]) == [f"t1:{step.lower()}"] * 2
    assert world.effects(OPERATION[step]) == 1
    assert t.done(step) == world.chain_of(step).done[OPERATION[step], f"t1:{step.lower()}"]


@pytest.mark.parametrize("step", [SOURCE, BRIDGE])
async def test_a_step_unanswered_twice_may_have_happened_so_it_is_undone_too(step):
    world = World()
    world.chain_of(step).script[OPERATION[step]] = ["lost", "silent"]
    t = await world.saga.advance(world.new())
    assert t.state == COMPENSATED and t.outcome_unknown
    assert "and again when asked once more" in t.failure_reason
    assert world.effects(OPERATION[step]) == 1
    assert [c.step for c in t.compensations] == list(reversed(STEPS[:STEPS.index(step) + 1]))
    assert world.source.outstanding() == {"lock": 0, "relay": 0, "mint": 0}


async def test_a_step_that_never_happened_but_stayed_unanswered_voids_its_key():
    world = World()
    world.source.script["lock"] = ["silent", "silent"]
    t = await world.saga.advance(world.new())
    assert t.state == COMPENSATED and t.compensations == []
    assert world.calls("unlock") == ["t1:source"] and "t1:source" in world.source.void
    assert world.effects("lock") == 0


async def test_a_mint_unanswered_twice_is_never_undone_and_is_asked_again_later():
    world = World()
    world.target.script["mint"] = ["lost", "silent"]
    t = await world.saga.advance(world.new())
    assert (t.state, t.current_step, t.compensating) == (IN_PROGRESS, TARGET, False)
    assert "is unconfirmed" in t.last_error and t.failure_reason == ""
    assert world.calls("unlock") == [] and world.calls("revert_relay") == []
    assert world.store.rows["t1"] == t
    t = await world.saga.advance(await world.store.get("t1"))       # the next drive
    assert t.state == COMPLETED and t.last_error == "" and t.attempts == 2
    assert world.calls("mint") == ["t1:target"] * 3 and world.effects("mint") == 1
    assert world.calls("lock") == ["t1:source"]                     # done steps are not asked again


async def test_a_step_a_crashed_drive_started_counts_as_maybe_done_when_it_then_fails():
    world = World()
    t = world.new()
    t.start(SOURCE, T0)
    t.record(SOURCE, await world.source.lock(t.amount, t.key(SOURCE)), T0)
    t.start(BRIDGE, T0)                     # the drive crashed here, after it may have sent the relay
    await world.store.save(t)
    world.source.script["relay"] = ["down"]
    t = await world.saga.advance(await world.store.get("t1"))
    assert t.state == COMPENSATED and t.outcome_unknown
    assert world.calls("revert_relay") == ["t1:bridge"] and "t1:bridge" in world.source.void
    assert [c.step for c in t.compensations] == [SOURCE]            # no relay had happened: nothing to record
    assert world.source.outstanding() == {"lock": 0, "relay": 0, "mint": 0}


async def test_a_compensation_that_keeps_failing_is_tried_with_backoff_then_left_to_an_operator():
    world = World(compensation_attempts=4)
    world.source.script["relay"] = ["reject"]
    world.source.script["unlock"] = ["down"] * 4
    t = await world.saga.advance(world.new())
    assert t.state == FAILED and t.completed_at is not None
    assert "refunding the lock t1:source on chains/ethereum failed 4 times" in t.failure_reason
    assert "an operator must finish the compensation" in t.failure_reason
    assert world.clock.slept == [0.05, 0.1, 0.2]
    assert world.calls("unlock") == ["t1:source"] * 4 and world.source.outstanding()["lock"] == 1
    assert world.store.rows["t1"] == t


async def test_a_refund_outlasts_a_burst_of_chain_errors_and_its_pauses_stop_growing_at_two_seconds():
    world = World()                     # the service's own numbers of attempts and pauses
    world.source.script["relay"] = ["reject"]
    world.source.script["unlock"] = ["down"] * (COMPENSATION_ATTEMPTS - 1)
    t = await world.saga.advance(world.new())
    assert t.state == COMPENSATED and world.effects("unlock") == 1
    assert world.clock.slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert world.calls("unlock") == ["t1:source"] * COMPENSATION_ATTEMPTS


async def test_a_compensation_that_fails_a_few_times_then_goes_through_compensates():
    world = World()
    world.target.script["mint"] = ["reject"]
    world.source.script["revert_relay"] = ["down", "silent"]
    t = await world.saga.advance(world.new())
    assert t.state == COMPENSATED and [c.step for c in t.compensations] == [BRIDGE, SOURCE]
    assert world.clock.slept == [0.05, 0.1]
    assert world.effects("revert_relay") == 1 and world.effects("unlock") == 1


async def test_concurrent_drives_of_one_transfer_run_one_after_the_other():
    world = World()
    driver = TransferDriver(world.store, world.saga)
    world.new()
    first, second = await asyncio.gather(driver.drive("t1"), driver.drive("t1"))
    assert first.state == second.state == COMPLETED
    assert [world.effects(OPERATION[s]) for s in STEPS] == [1, 1, 1]
    assert [len(world.calls(OPERATION[s])) for s in STEPS] == [1, 1, 1]     # the second found it done
    with pytest.raises(NotFound):
        await driver.drive("nope")


async def test_resuming_drives_every_unfinished_transfer():
    world = World()
    driver = TransferDriver(world.store, world.saga)
    world.target.script["mint"] = ["silent", "silent"]
    waiting = await world.saga.advance(world.new("t1"))
    world.new("t2")
    assert waiting.state == IN_PROGRESS
    assert await driver.resume_once() == 2
    assert {t.state for t in world.store.rows.values()} == {COMPLETED}
    assert await driver.resume_once() == 0


def test_asked_again_keeps_an_answer_and_otherwise_says_the_step_may_have_happened():
    timeout = StepOutcome(message="no answer", timed_out=True)
    tx = ChainTx("ethereum", "0x1", 1)
    assert timeout.asked_again(StepOutcome(tx=tx)) == StepOutcome(tx=tx)
    assert timeout.asked_again(StepOutcome(message="no", rejected=True)).rejected
    again = timeout.asked_again(StepOutcome(message="still nothing", timed_out=True))
    assert again.unknown and again.tx is None and "still nothing" in again.message


def test_a_finished_transfer_cannot_change_state_again():
    t = World().new()
    t.finish(COMPLETED, T0)
    with pytest.raises(ValueError, match="cannot go from COMPLETED to FAILED"):
        t.finish(FAILED, T0)
