"""The queue workers: each claims a transaction from the work queue, keeps its lease while the
transaction is screened (compliance) and the saga of its type runs, and writes the outcome. Every terminal state is written
with its event (outbox) and the queue item's removal, in one unit of work: a crash anywhere
leaves either the old state with the item still queued, or the new state with its event and
no item. A saga step that cannot say for sure whether it happened (a timeout, an upstream
down) is asked again later with the same idempotency key, never assumed to have failed; once
the queue's retry policy is spent, the item is parked as a dead letter (the transaction keeps
its state and whatever it holds, and shows why) until an operator replays it. A transaction
held by screening waits in the queue, looked at again now and then, its retry policy starting
again at each look (WorkQueue.defer). Each attempt at
a saga is a span in the trace of the request that created the transaction (the work item
carries its context), and so are its upstream calls and its event."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Callable

from services.domain.errors import DeadlineExceeded, DomainError, ServiceUnavailable
from services.runtime.context import outside_the_call
from services.runtime.loops import repeat
from services.runtime.messaging.queue import Claimed, Retried, WorkQueue
from services.runtime.tracing import MessageTracing
from services.runtime.unit_of_work import UnitsOfWork

from .domain import COMPLETED, FAILED, TERMINAL, Transaction
from .events import event_for
from .ports import ChainPort, CompliancePort, ProviderPort, WalletPort
from .repository import TransactionRepository
from .sagas import Sagas
from .sagas.saga import Fail, SagaContext, Waiting
from .sagas.screening import screen

log = logging.getLogger("diboas.transaction")


class Worker:
    def __init__(self, units: UnitsOfWork[TransactionRepository], queue: WorkQueue, sagas: Sagas,
                 wallet: WalletPort, providers: ProviderPort | None, chains: ChainPort | None,
                 compliance: CompliancePort, clock: Callable[[], dt.datetime], tracing: MessageTracing,
                 started_limit: int = 0, changed: Callable[[str], None] = lambda transaction_id: None):
        self._units, self._queue, self._sagas, self._clock, self._tracing = units, queue, sagas, clock, tracing
        self._changed = changed         # told the id of a transaction whose change was just committed
        self._context = SagaContext(wallet, providers, chains, clock, self._save_progress, compliance)
        self._started: set[asyncio.Task] = set()
        self._started_limit = started_limit
        self._waiting = False           # items may wait in the queue (the last look, or queued since)
        self._queued_here = 0           # items this process queued for the workers, ever

    # --- sagas started by the request that created them -----------------------------------------

    def may_start(self) -> bool:
        """Whether a new item's first attempt may start at once (`start`), rather than wait for a
        worker: while fewer than `started_limit` such attempts run, and while nothing waits in the
        queue. Under overload that keeps the order first come, first served: without the second
        rule, new items took every free start while queued ones waited seconds for a worker."""
        return not self._waiting and len(self._started) < self._started_limit

    def queued(self) -> None:
        """An item was just queued for the workers (not started at once): new ones queue behind it
        until a look at the queue finds nothing waiting."""
        self._waiting = True
        self._queued_here += 1

    async def look_at_queue(self) -> None:
        """Find out whether anything waits in the queue (every instance's items, retries that fell
        due): what `may_start` goes by. An item queued here meanwhile keeps the answer "yes"."""
        queued_before = self._queued_here
        self._saw(await self._units.run(self._queue.anything_waiting), queued_before)

    def _saw(self, waiting: bool, queued_before: int) -> None:
        if waiting or self._queued_here == queued_before:
            self._waiting = waiting

    async def watch_queue(self, stop: asyncio.Event, interval: float = 0.25) -> None:
        """Background work: `look_at_queue` every `interval` seconds until `stop` is set."""
        await repeat(stop, interval, self.look_at_queue, failure="could not look at the queue", logger=log)

    def start(self, claimed: Claimed, tx: Transaction) -> None:
        """Run the first attempt of an item queued already claimed (WorkQueue.enqueue, leased) for
        the transaction `tx` just committed, in a task of its own that outlives the request: what
        fails is retried by the workers as usual, and if this process dies meanwhile, the lease
        brings the item back to them."""
        task = asyncio.get_running_loop().create_task(self.attempt(claimed, tx), context=outside_the_call())
        self._started.add(task)
        task.add_done_callback(self._started.discard)

    async def finish_started(self, stop: asyncio.Event) -> None:
        """Background work: once `stop` is set, wait for the attempts `start` began (the server
        gives them its drain time, then cancels this, and they are cancelled too)."""
        await stop.wait()
        try:
            while self._started:
                await asyncio.wait(set(self._started))
        except asyncio.CancelledError:
            for task in self._started:
                task.cancel()
            raise

    def _save(self, tx: Transaction, claimed: Claimed | None) -> None:
        """Write the saga's progress; a terminal state with its event and the item's removal."""
        with self._units.begin() as unit:
            if unit.repo.save_progress(tx) and tx.state in TERMINAL:
                topic, event = event_for(tx)
                unit.publish(topic, tx.name, event)
            if claimed is not None:
                unit.done(claimed)

    async def _save_progress(self, tx: Transaction) -> None:
        await self._units.run(self._save, tx, None)
        self._changed(tx.id)

    def _get(self, transaction_id: str) -> Transaction | None:
        with self._units.reading() as unit:
            return unit.repo.get(transaction_id)

    async def process(self, claimed: Claimed, tx: Transaction | None = None) -> None:
        """One queued transaction (read unless given): screen it, then run its saga to COMPLETED or
        FAILED. A step that may have happened raises, and the item is retried later (each step is
        idempotent by key); a held transaction raises Waiting."""
        if tx is None:
            tx = await self._units.run(self._get, claimed.item)
        if tx is None or tx.state in TERMINAL:
            await self._units.run(self._drop, claimed)
            return
        try:
            await screen(tx, self._context)
            await self._sagas.of(tx.type).run(tx, self._context)
            state, reason = COMPLETED, ""
        except Fail as failed:
            state, reason = FAILED, failed.reason
        tx.move_to(state, self._clock(), reason=reason)
        await self._units.run(self._save, tx, claimed)

    def _drop(self, claimed: Claimed) -> None:
        """The item of a transaction that has ended (or is gone) leaves the queue."""
        with self._units.begin() as unit:
            unit.done(claimed)

    async def _keep_lease(self, claimed: Claimed) -> None:
        """While a saga runs, renew its item's lease, so no other worker takes it meanwhile."""
        interval = self._queue.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._units.run(self._queue.renew, claimed):
                    log.warning("transactions/%s: lease lost to another worker", claimed.item)
                    return
            except DomainError:
                pass            # the database is away: try again at the next beat

    async def work(self, stop: asyncio.Event, idle_seconds: float = 0.25) -> None:
        """One competing consumer of the queue, until `stop` is set: the next item at once after
        one was run; when there was none (or it could not be claimed), a pause of `idle_seconds`,
        cut short when this process queues an item (`WorkQueue.arrived`). The pause bounds how
        late a retry that is due, or another instance's item, is taken."""
        await repeat(stop, idle_seconds, self._work_one, failure="could not claim work", wait_only_when_idle=True,
                     logger=log, wake=self._queue.arrived)

    async def _work_one(self) -> bool:
        """Claim one item and run its saga; False when there was none."""
        queued_before = self._queued_here
        claimed = await self._units.run(self._queue.claim)
        if claimed is None:
            self._saw(False, queued_before)             # the queue was empty just now
            return False
        await self.attempt(claimed)
        return True

    async def attempt(self, claimed: Claimed, tx: Transaction | None = None) -> Retried | None:
        """Run a claimed item's saga (of `tx`, when the caller has it), keeping its lease meanwhile.
        None when its outcome was written; else what became of the item (rescheduled after a
        delay, parked, or lost to another worker)."""
        heartbeat = asyncio.get_running_loop().create_task(self._keep_lease(claimed))
        waiting: Waiting | None = None
        try:
            with self._tracing.processing(self._queue.name, str(claimed.id), claimed.traceparent,
                                          claimed.tracestate, attempt=claimed.attempts,
                                          conversation=f"transactions/{claimed.item}"):
                try:
                    await self.process(claimed, tx)
                except Waiting as outcome:          # no error: the span ends OK
                    waiting = outcome
            return None if waiting is None else await self._defer(claimed, waiting)
        except Exception as exc:  # noqa: BLE001 - every failure puts the item back for later (or parks it)
            return await self._failed(claimed, exc)
        finally:
            heartbeat.cancel()
            self._changed(claimed.item)      # its outcome, or its item parked (or only retried: no change)

    async def _defer(self, claimed: Claimed, waiting: Waiting) -> Retried:
        """The saga waits (a review): its item back after the delay, the retry policy started
        again. When that cannot be written (the database is away), the item comes back by itself
        once its lease runs out, as after a failure."""
        try:
            return await self._units.run(self._queue.defer, claimed, waiting.delay, waiting.message)
        except Exception:  # noqa: BLE001 - a database hiccup must not end the worker
            log.warning("transactions/%s: %s; could not be put back for later, it comes back when its lease "
                        "runs out", claimed.item, waiting.message, exc_info=True)
            return Retried(delay=dt.timedelta(seconds=self._queue.lease_seconds))

    async def _failed(self, claimed: Claimed, exc: Exception) -> Retried:
        """An attempt failed: reschedule or park its item, and say which. When that cannot be
        written either (the database is away too), the item comes back by itself once its lease
        runs out (the Retried says so); the worker goes on."""
        message = getattr(exc, "message", None) or repr(exc)
        try:
            retried = await self._units.run(self._queue.retry, claimed, message)
        except Exception:  # noqa: BLE001 - a database hiccup must not end the worker
            log.warning("transactions/%s: attempt %d failed (%s) and could not be rescheduled; it comes back "
                        "when its lease runs out", claimed.item, claimed.attempts, message, exc_info=True)
            return Retried(delay=dt.timedelta(seconds=self._queue.lease_seconds))
        then = ("parked (the money stays held until a replay)" if retried.parked
                else "no longer ours: another worker holds it, or it was parked" if retried.lost
                else f"retrying in {retried.delay.total_seconds():.1f}s")
        log.log(logging.INFO if isinstance(exc, (ServiceUnavailable, DeadlineExceeded)) else logging.ERROR,
                "transactions/%s: attempt %d failed (%s); %s", claimed.item, claimed.attempts,
                message, then, exc_info=not isinstance(exc, DomainError))
        return retried
