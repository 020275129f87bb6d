"""Transaction use cases: create (checked by the saga of its type, validated against the
wallets, idempotent), read and list; and the queue workers that run the sagas (worker.py).
Each use case is one unit of work over the TransactionRepository. Nothing here knows about
grpc: the first response of a create is stored as the opaque bytes the caller's `encode` gives
(and replayed verbatim)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from services.domain.clock import utcnow
from services.domain.errors import DeadlineExceeded, NotFound
from services.domain.money import Money, require_transaction_limit
from services.runtime.backlog import Backlog
from services.runtime.db import Database
from services.runtime.messaging.queue import Claimed, ParkedItem, Retried, WorkQueue
from services.runtime.messaging.store import Outbox
from services.runtime.requests import INSTANT, KEY, PageTokens, page_size
from services.runtime.tracing import MessageTracing
from services.runtime.unit_of_work import UnitOfWork, UnitsOfWork
from services.runtime.users import User

from .domain import PENDING, TERMINAL, Parked, Transaction
from .ports import ChainPort, CompliancePort, ProviderPort, WalletPort
from .repository import TransactionRepository
from .sagas import SAGAS, Sagas
from .sagas.saga import Admission
from .tables import idempotency_keys
from .watchers import Watchers, shutting_down
from .worker import Worker

PAGES = PageTokens("transactions", INSTANT, KEY)     # after this (created_at, id), newest first
CREATE = "CreateTransaction"                         # the operation its idempotency records name
WATCH_SECONDS = 300         # the longest one WatchTransaction runs: then the caller watches again
WATCHES = 1000              # open WatchTransactions per process, at most
WATCHES_PER_USER = 20       # and of one user (an operator's are counted in the first only)
# How often a watcher also re-reads its transaction unwoken: a change committed by another
# instance of the service wakes no one here.
RECHECK_SECONDS = 10.0


@dataclass(frozen=True)
class Page:
    items: list[Transaction]
    next_page_token: str


def _parked(item: ParkedItem, viewer: User | None) -> Parked:
    """What a parked saga shows: its last error only to operators (it may name our internals)."""
    shown = viewer is None or viewer.is_operator
    return Parked(item.reason, item.error if shown else "", item.attempts, item.parked_at, item.id)


def _with_parked(unit: UnitOfWork[TransactionRepository], found: list[Transaction],
                 viewer: User | None) -> list[Transaction]:
    """The transactions, each with its saga's dead letter while it is parked."""
    parked = unit.parked_in([tx.id for tx in found if tx.state not in TERMINAL])
    for tx in found:
        if tx.id in parked:
            tx.parked = _parked(parked[tx.id], viewer)
    return found


class TransactionService:
    """`compliance`: what screens every transaction before its saga. `units`: the units of work
    to use instead of ones over `db`, `outbox` and `queue` (the
    unit tests pass fakes, and None for those three). `backlog`: the bound on transactions
    accepted and not settled (None: no bound)."""

    def __init__(self, db: Database | None, wallet: WalletPort, queue: WorkQueue, outbox: Outbox | None,
                 providers: ProviderPort | None = None, chains: ChainPort | None = None, *,
                 compliance: CompliancePort, clock: Callable[[], dt.datetime] = utcnow,
                 ids: Callable[[], str] = lambda: uuid.uuid4().hex,
                 tracing: MessageTracing | None = None, sagas: Sagas = SAGAS,
                 units: UnitsOfWork[TransactionRepository] | None = None, started_at_once: int = 0,
                 backlog: Backlog | None = None):
        self.db, self.queue, self._backlog = db, queue, backlog
        self.units = units or UnitsOfWork(db, TransactionRepository, outbox=outbox, queue=queue,
                                          idempotency=idempotency_keys, clock=clock)
        self._wallet, self._sagas, self._clock, self._ids = wallet, sagas, clock, ids
        self._providers, self._chains = providers, chains
        self.watchers = Watchers(WATCHES, WATCHES_PER_USER)
        self._worker = Worker(self.units, queue, sagas, wallet, providers, chains, compliance, clock,
                              tracing or MessageTracing(), started_at_once, changed=self.watchers.changed)

    # --- create ---------------------------------------------------------------------------------

    async def create(self, request_id: str, fingerprint: str, draft: Transaction,
                     encode: Callable[[Transaction], bytes], viewer: User | None = None) -> bytes:
        """A transaction, queued for its saga once the saga's checks pass and the wallets agree it
        can start (nothing is written when they do not). The amount must be within the
        currency's max_transaction. A repeated request_id returns the first answer; a new one is
        refused (ResourceExhausted) while the backlog is at its bound. While fewer
        than `started_at_once` sagas started this way run and nothing waits in the queue, the
        new one is queued already claimed and its first attempt starts as soon as the
        transaction is committed (no wait for a worker); otherwise it queues behind what waits,
        for the workers (Worker.may_start)."""
        saga = self._sagas.of(draft.type)
        saga.check(draft)
        destination, currency = draft.destination_wallet, draft.amount.currency

        def on_its_way(unit: UnitOfWork[TransactionRepository]) -> Money | None:
            return unit.repo.incoming(destination, currency) if destination else None
        # The first answer of a repeated request_id and, for a new request, what is on its way to
        # the destination (which the admission reads before the wallets): one read, not two.
        first, read_already = await self.units.run(self.units.stored_or_read, CREATE, request_id, fingerprint,
                                                   on_its_way)
        if first is not None:
            return first
        # A place below the backlog's bound is kept from here to the commit.
        with self._backlog.admit() if self._backlog is not None else contextlib.nullcontext():
            require_transaction_limit(draft.amount, "transaction.amount.amount")

            async def incoming(wallet: str, wallet_currency: str) -> Money:
                if read_already is not None and (wallet, wallet_currency) == (destination, currency):
                    return read_already
                return await self._incoming(wallet, wallet_currency)
            admission = Admission(draft, viewer, self._wallet, incoming, self._providers, self._chains)
            source_owner, destination_owner = await saga.admit(draft, admission)

            claims: dict[str, Claimed | None] = {}               # by transaction id, of every attempt
            answers: dict[bytes, tuple[Claimed | None, Transaction]] = {}   # by the answer each attempt encoded

            def work(unit: UnitOfWork[TransactionRepository]) -> Transaction:
                tx = dataclasses.replace(draft, id=self._ids(), state=PENDING, hold="", failure_reason="",
                                         created_at=unit.now, updated_at=unit.now, completed_at=None,
                                         source_owner=source_owner, destination_owner=destination_owner)
                unit.repo.add(tx)
                claims[tx.id] = unit.enqueue(tx.id, priority=saga.priority, leased=self._worker.may_start())
                return tx

            def answer(tx: Transaction) -> bytes:
                encoded = encode(tx)
                answers[encoded] = (claims[tx.id], tx)
                return encoded
            response = await self.units.run(self.units.idempotent, CREATE, request_id, fingerprint, work, answer)
            # Only the attempt whose answer is returned committed (an earlier one may have been
            # rolled back and retried, or the answer may be a concurrent request's).
            claimed, tx = answers.get(response, (None, None))
            if tx is not None and self._backlog is not None:
                self._backlog.accepted()
            if claimed is not None:
                self._worker.start(claimed, tx)
            elif tx is not None:                    # queued for the workers (or the dispatcher)
                self._worker.queued()
                self.queue.arrived.set()
            return response

    async def _incoming(self, wallet: str, currency: str) -> Money:
        def read() -> Money:
            with self.units.reading() as unit:
                return unit.repo.incoming(wallet, currency)
        return await self.units.run(read)

    # --- reads ----------------------------------------------------------------------------------

    async def get(self, transaction_id: str, viewer: User | None = None) -> Transaction:
        """The transaction; NOT_FOUND also when it touches none of the user's wallets."""
        def read() -> Transaction | None:
            with self.units.reading() as unit:
                found = unit.repo.get(transaction_id, viewer)
                return _with_parked(unit, [found], viewer)[0] if found else None
        tx = await self.units.run(read)
        if tx is None:
            raise NotFound(f"transaction transactions/{transaction_id} does not exist", reason="TRANSACTION_NOT_FOUND")
        return tx

    async def watch(self, transaction_id: str, viewer: User | None = None, seconds: float = WATCH_SECONDS,
                    recheck_seconds: float = RECHECK_SECONDS) -> AsyncIterator[Transaction]:
        """The transaction now (as `get` reads it, for the same viewers), then again after each
        change, until it is COMPLETED or FAILED: that one is the last. A change committed by this
        process wakes the watcher at once; one committed elsewhere is seen within
        `recheck_seconds` (each watcher's own, give or take a fifth, so that watchers opened
        together do not read together). DeadlineExceeded once `seconds` have passed without an
        outcome; ServiceUnavailable when the process shuts down meanwhile."""
        loop = asyncio.get_running_loop()
        seconds = min(seconds, WATCH_SECONDS)
        until, last = loop.time() + seconds, None
        recheck_seconds *= random.uniform(0.8, 1.2)
        who = None if viewer is None or viewer.is_operator else viewer.id
        with self.watchers.watch(transaction_id, who) as changed:
            while True:
                changed.clear()             # before the read: a change committed after it wakes the wait
                if self.watchers.closing:
                    raise shutting_down()
                tx = await self.get(transaction_id, viewer)
                if tx != last:
                    yield tx
                    last = tx
                if tx.state in TERMINAL:
                    return
                left = until - loop.time()
                if left <= 0:
                    raise DeadlineExceeded(f"transactions/{transaction_id} is still {tx.state} after "
                                           f"{seconds:.0f}s of watching: watch it again", reason="WATCH_TIME_UP")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, recheck_seconds))

    async def list(self, wallet: str, size: int, token: str, viewer: User | None = None) -> Page:
        """Newest first, optionally of one wallet (as source or destination); keyset paging. A user
        who is not an operator sees only transactions that touch their own wallets."""
        limit = page_size(size)
        after = PAGES.read(token)

        def read() -> list[Transaction]:
            with self.units.reading() as unit:
                return _with_parked(unit, unit.repo.newest(wallet, after, limit + 1, viewer), viewer)
        found = await self.units.run(read)
        more = len(found) > limit
        return Page(found[:limit], PAGES.write(found[limit - 1].created_at, found[limit - 1].id) if more else "")

    # --- processing -----------------------------------------------------------------------------

    async def process(self, claimed: Claimed) -> None:
        """Run the saga of one claimed item (see Worker.process)."""
        await self._worker.process(claimed)

    async def attempt(self, claimed: Claimed) -> Retried | None:
        """One attempt at a claimed item's saga (see Worker.attempt): what the broker's consumers run."""
        return await self._worker.attempt(claimed)

    async def finish_started(self, stop: asyncio.Event) -> None:
        """Background work: on stop, wait for the sagas that requests started (Worker.finish_started)."""
        await self._worker.finish_started(stop)

    async def watch_queue(self, stop: asyncio.Event) -> None:
        """Background work: keep track of whether anything waits in the queue (Worker.watch_queue)."""
        await self._worker.watch_queue(stop)

    async def look_at_queue(self) -> None:
        """Look once whether anything waits in the queue (Worker.look_at_queue)."""
        await self._worker.look_at_queue()

    async def work(self, stop: asyncio.Event, idle_seconds: float = 0.25) -> None:
        """One competing consumer of the queue, until `stop` is set."""
        await self._worker.work(stop, idle_seconds)
