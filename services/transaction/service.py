"""Transaction use cases: create (idempotent, validated against the wallet), read, list, and
run the queued sagas (domain.py has their steps). Every terminal state is written with its
event (outbox) and the queue item's removal, in one database transaction: a crash anywhere
leaves either the old state with the item still queued, or the new state with its event and
no item. A saga step that cannot say for sure whether it happened (a timeout, an upstream
down) is asked again later with the same idempotency key, never assumed to have failed; once
the queue's retry policy is spent, the item is parked as a dead letter (the transaction keeps
its state and whatever it holds, and shows why) until an operator replays it. Each attempt at
a saga is a span in the trace of the request that created the transaction (the work item
carries its context), and so are its upstream calls and its event."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Connection, and_, insert, or_, select, update

from diboas.events.v1 import events_pb2
from diboas.transaction.v1 import transaction_pb2
from services.domain.clock import utcnow
from services.domain.errors import DeadlineExceeded, DomainError, FailedPrecondition, InvalidArgument, NotFound, ServiceUnavailable
from services.domain.money import Money, require_balance_room, require_transaction_limit
from services.runtime.db import Database, as_utc
from services.runtime.idempotency import run_idempotent, stored_response
from services.runtime.messaging.queue import Claimed, ParkedItem, WorkQueue
from services.runtime.messaging.store import Outbox
from services.runtime.requests import INSTANT, KEY, PageTokens, page_size
from services.runtime.tracing import MessageTracing
from services.runtime.users import User
from services.runtime.wire import money_pb, timestamp

from .domain import BRIDGE, COMPLETED, DEPOSIT, FAILED, PENDING, PROCESSING, SEND, TERMINAL, WITHDRAW, Parked, Transaction
from .partners import ChainClient, ProviderClient
from .tables import idempotency_keys, transactions
from .wallet_client import WalletClient, WalletFacts

log = logging.getLogger("diboas.transaction")


def _row(row) -> Transaction:
    return Transaction(row.id, row.type, row.state, row.source_wallet, row.destination_wallet,
                       Money(row.currency, row.amount), row.hold, row.failure_reason, as_utc(row.created_at),
                       as_utc(row.updated_at), as_utc(row.completed_at), row.provider, row.provider_payment,
                       row.source_chain, row.target_chain, row.destination_address, row.cross_chain_transfer,
                       [tuple(ref) for ref in json.loads(row.chain_transactions)])


def _parked(item: ParkedItem, viewer: User | None) -> Parked:
    """What a parked saga shows: its last error only to operators (it may name our internals)."""
    shown = viewer is None or viewer.is_operator
    return Parked(item.reason, item.error if shown else "", item.attempts, item.parked_at, item.id)


def _saga_columns(tx: Transaction) -> dict:
    """What the saga steps change, as columns."""
    return dict(state=tx.state, hold=tx.hold, failure_reason=tx.failure_reason, updated_at=tx.updated_at,
                completed_at=tx.completed_at, provider=tx.provider, provider_payment=tx.provider_payment,
                cross_chain_transfer=tx.cross_chain_transfer, chain_transactions=json.dumps(tx.chain_transactions))


def _visible_to(query, viewer: User | None):
    if viewer is None or viewer.is_operator:
        return query
    t = transactions.c
    return query.where(or_(t.source_owner == viewer.id, t.destination_owner == viewer.id))


class _Fail(Exception):
    """The saga ends FAILED with this reason (whatever it held is released on the event)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _definitive(exc: DomainError) -> bool:
    """An upstream refusal that says the step did not and will not happen (bad input, a missing
    wallet, no funds, no provider able): the saga can fail. Anything else may have happened."""
    return (isinstance(exc, (InvalidArgument, NotFound, FailedPrecondition))
            or getattr(exc, "reason", "") == "NO_PROVIDER_AVAILABLE")


def event_for(tx: Transaction) -> tuple[str, events_pb2.TransactionCompleted | events_pb2.TransactionFailed]:
    kind = transaction_pb2.TransactionType.Value(f"TRANSACTION_TYPE_{tx.type}")
    if tx.state == COMPLETED:
        event = events_pb2.TransactionCompleted(transaction=tx.name, type=kind, source_wallet=tx.source_wallet,
                                                destination_wallet=tx.destination_wallet, amount=money_pb(tx.amount),
                                                hold=tx.hold)
        event.complete_time.CopyFrom(timestamp(tx.completed_at))
        return "transaction.completed", event
    event = events_pb2.TransactionFailed(transaction=tx.name, type=kind, source_wallet=tx.source_wallet,
                                         destination_wallet=tx.destination_wallet, amount=money_pb(tx.amount),
                                         hold=tx.hold, reason=tx.failure_reason)
    event.fail_time.CopyFrom(timestamp(tx.completed_at))
    return "transaction.failed", event


PAGES = PageTokens("transactions", INSTANT, KEY)     # after this (created_at, id), newest first


@dataclass(frozen=True)
class Page:
    items: list[Transaction]
    next_page_token: str


class TransactionService:
    def __init__(self, db: Database, wallet: WalletClient, queue: WorkQueue, outbox: Outbox,
                 providers: ProviderClient | None = None, chains: ChainClient | None = None,
                 clock: Callable[[], dt.datetime] = utcnow, ids: Callable[[], str] = lambda: uuid.uuid4().hex,
                 tracing: MessageTracing | None = None):
        self.db, self._wallet, self.queue, self._outbox = db, wallet, queue, outbox
        self._providers, self._chains = providers, chains
        self._clock, self._ids = clock, ids
        self._tracing = tracing or MessageTracing()
        self._sagas = {SEND: self._send, DEPOSIT: self._deposit, WITHDRAW: self._withdraw, BRIDGE: self._bridge}

    # --- create ---------------------------------------------------------------------------------

    async def create(self, request_id: str, fingerprint: str, draft: Transaction,
                     encode: Callable[[Transaction], bytes], viewer: User | None = None) -> bytes:
        """A transaction, queued for its saga once the wallets agree it can start (nothing is
        written when they do not). A repeated request_id returns the first answer."""
        def stored() -> bytes | None:
            with self.db.reading() as connection:
                return stored_response(connection, idempotency_keys, "CreateTransaction", request_id, fingerprint)
        first = await self.db.run(stored)
        if first is not None:
            return first
        source_owner, destination_owner = await self._check_wallets(draft, viewer)

        def work(connection: Connection, now: dt.datetime) -> Transaction:
            tx = dataclasses.replace(draft, id=self._ids(), state=PENDING, hold="", failure_reason="",
                                     created_at=now, updated_at=now, completed_at=None)
            owners = dict(source_owner=source_owner, destination_owner=destination_owner)
            connection.execute(insert(transactions).values(
                id=tx.id, type=tx.type, source_wallet=tx.source_wallet, destination_wallet=tx.destination_wallet,
                currency=tx.amount.currency, amount=tx.amount.amount, created_at=now, source_chain=tx.source_chain,
                target_chain=tx.target_chain, destination_address=tx.destination_address, **owners,
                **_saga_columns(tx)))
            self.queue.enqueue(connection, tx.id, priority=10 if tx.type == SEND else 5)
            return tx
        return await self.db.run(run_idempotent, self.db, idempotency_keys, "CreateTransaction", request_id,
                                 fingerprint, work, encode, self._clock)

    async def _check_wallets(self, draft: Transaction, viewer: User | None) -> tuple[str, str]:
        """(source owner, destination owner) once the wallets agree the transaction can start. The
        wallet the money leaves (or, for a DEPOSIT, arrives in) must be the user's own: someone
        else's is NOT_FOUND, worded like a missing one, before anything else about it (its
        currency, its funds) is said. The amount must be within the currency's max_transaction,
        and the destination's balance, with what is already on its way to it and the amount,
        within its max_balance: so nothing accepted can fail to settle for a limit later."""
        require_transaction_limit(draft.amount, "transaction.amount.amount")
        receives = draft.type in (SEND, DEPOSIT)
        # What is on its way is read before the balance, so one that the wallet settles in between
        # is counted twice (too careful) rather than missed. Not counted: a transaction COMPLETED
        # whose event the wallet has not handled yet; decision 24 bounds what that can add.
        incoming = await self.db.run(self._incoming, draft.destination_wallet, draft.amount.currency) if receives else None

        async def wallet(name: str, field: str, own: bool) -> WalletFacts:
            try:
                facts = await self._wallet.describe(name)
            except NotFound:
                facts = None
            if facts is None or (own and viewer is not None and not viewer.may_see(facts.owner)):
                raise NotFound(f"wallet {name} does not exist", reason="WALLET_NOT_FOUND")
            if facts.currency != draft.amount.currency:
                raise InvalidArgument.field(field, f"{name} holds {facts.currency}, not {draft.amount.currency}")
            return facts
        source_owner = ""
        destination = None
        if draft.type != DEPOSIT:
            source_owner = (await wallet(draft.source_wallet, "transaction.source_wallet", own=True)).owner
        if receives:
            destination = await wallet(draft.destination_wallet, "transaction.destination_wallet",
                                       own=draft.type == DEPOSIT)
        if draft.type != DEPOSIT:
            funds = await self._wallet.funds(draft.source_wallet, draft.amount)
            if not funds.sufficient:
                raise FailedPrecondition(
                    f"insufficient funds in {draft.source_wallet}: available {funds.available} {draft.amount.currency}, "
                    f"{draft.amount} needed", reason="INSUFFICIENT_FUNDS", metadata={"wallet": draft.source_wallet})
        if destination is not None:
            require_balance_room(draft.destination_wallet, destination.balance, incoming, draft.amount,
                                 disclose=viewer is None or viewer.may_see(destination.owner))
        return source_owner, destination.owner if destination else ""

    def _incoming(self, wallet: str, currency: str) -> Money:
        """What transactions accepted and not finished yet bring to `wallet`."""
        t = transactions.c
        query = select(t.amount).where(t.destination_wallet == wallet, t.currency == currency,
                                       t.state.in_((PENDING, PROCESSING)))
        with self.db.reading() as connection:
            amounts = connection.execute(query).scalars().all()
        return sum((Money(currency, amount) for amount in amounts), Money.zero(currency))

    # --- reads ----------------------------------------------------------------------------------

    def _read(self, connection: Connection, query, viewer: User | None) -> list[Transaction]:
        """The transactions `query` selects that `viewer` may see, each with its saga's dead letter
        while it is parked."""
        found = [_row(row) for row in connection.execute(_visible_to(query, viewer))]
        parked = self.queue.parked_in(connection, [tx.id for tx in found if tx.state not in TERMINAL])
        for tx in found:
            if tx.id in parked:
                tx.parked = _parked(parked[tx.id], viewer)
        return found

    def _get(self, transaction_id: str, viewer: User | None = None) -> Transaction | None:
        query = select(transactions).where(transactions.c.id == transaction_id)
        with self.db.reading() as connection:
            found = self._read(connection, query, viewer)
        return found[0] if found else None

    async def get(self, transaction_id: str, viewer: User | None = None) -> Transaction:
        """The transaction; NOT_FOUND also when it touches none of the user's wallets."""
        tx = await self.db.run(self._get, transaction_id, viewer)
        if tx is None:
            raise NotFound(f"transaction transactions/{transaction_id} does not exist", reason="TRANSACTION_NOT_FOUND")
        return tx

    async def list(self, wallet: str, size: int, token: str, viewer: User | None = None) -> Page:
        """Newest first, optionally of one wallet (as source or destination); keyset paging. A user
        who is not an operator sees only transactions that touch their own wallets."""
        limit = page_size(size)
        after = PAGES.read(token)

        def read() -> list[Transaction]:
            t = transactions.c
            query = select(transactions).order_by(t.created_at.desc(), t.id.desc()).limit(limit + 1)
            if wallet:
                query = query.where(or_(t.source_wallet == wallet, t.destination_wallet == wallet))
            if after is not None:
                created, last_id = after
                query = query.where(or_(t.created_at < created, and_(t.created_at == created, t.id < last_id)))
            with self.db.reading() as connection:
                return self._read(connection, query, viewer)
        found = await self.db.run(read)
        more = len(found) > limit
        return Page(found[:limit], PAGES.write(found[limit - 1].created_at, found[limit - 1].id) if more else "")

    # --- processing -----------------------------------------------------------------------------

    def _save(self, tx: Transaction, claimed: Claimed | None) -> None:
        """Write the saga's progress; a terminal state with its event and the item's removal."""
        with self.db.transaction() as connection:
            query = select(transactions.c.state).where(transactions.c.id == tx.id)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()
            if connection.execute(query).scalar_one() not in TERMINAL:
                connection.execute(update(transactions).where(transactions.c.id == tx.id).values(**_saga_columns(tx)))
                if tx.state in TERMINAL:
                    topic, event = event_for(tx)
                    self._outbox.add(connection, topic, tx.name, event)
            if claimed is not None:
                self.queue.done(connection, claimed)

    async def _progress(self, tx: Transaction, **changes) -> None:
        """A step is done: PROCESSING, with what it made (a hold, a payment, a transfer)."""
        for key, value in changes.items():
            setattr(tx, key, value)
        if tx.state == PENDING:
            tx.move_to(PROCESSING, self._clock())
        tx.updated_at = self._clock()
        await self.db.run(self._save, tx, None)

    async def process(self, claimed: Claimed) -> None:
        """One queued transaction: run its saga to COMPLETED or FAILED. A step that may have
        happened raises, and the item is retried later (each step is idempotent by key)."""
        tx = await self.db.run(self._get, claimed.item)
        if tx is None or tx.state in TERMINAL:
            await self.db.run(self._finish_gone, claimed)
            return
        try:
            await self._sagas[tx.type](tx)
            state, reason = COMPLETED, ""
        except _Fail as failed:
            state, reason = FAILED, failed.reason
        tx.move_to(state, self._clock(), reason=reason)
        await self.db.run(self._save, tx, claimed)

    async def _step(self, call, atomic: bool = False):
        """Run one upstream step. A definitive refusal fails the saga; anything else is retried
        later. For an atomic step (one database transaction upstream, like a hold) every answer
        but unavailable or too late is definitive: it did not happen."""
        try:
            return await call
        except DomainError as exc:
            retryable = isinstance(exc, (ServiceUnavailable, DeadlineExceeded))
            if (atomic and not retryable) or _definitive(exc):
                raise _Fail(exc.message) from None
            raise

    async def _hold(self, tx: Transaction) -> None:
        if not tx.hold:
            hold = await self._step(self._wallet.hold(tx.source_wallet, tx.amount, tx.name, request_id=f"{tx.id}:hold"),
                                   atomic=True)
            if tx.type == SEND:
                tx.hold = hold                   # one step: no need to record PROCESSING first
            else:
                await self._progress(tx, hold=hold)

    async def _send(self, tx: Transaction) -> None:
        await self._hold(tx)

    async def _deposit(self, tx: Transaction) -> None:
        await self._pay(tx, pay_in=True, wallet=tx.destination_wallet)

    async def _withdraw(self, tx: Transaction) -> None:
        await self._hold(tx)
        await self._pay(tx, pay_in=False, wallet=tx.source_wallet)

    async def _pay(self, tx: Transaction, pay_in: bool, wallet: str) -> None:
        payment = await self._step(self._providers.pay(pay_in, tx.amount, wallet, tx.name, tx.provider,
                                                       request_id=f"{tx.id}:payment"))
        if payment.state == "PENDING":
            raise ServiceUnavailable(f"{payment.name} is still pending", reason="PAYMENT_PENDING")
        tx.provider_payment = payment.name
        if payment.state != "SUCCEEDED":
            raise _Fail(f"{payment.name} failed: {payment.failure_reason}")
        tx.provider = payment.provider

    async def _bridge(self, tx: Transaction) -> None:
        await self._hold(tx)
        transfer = await self._step(self._chains.transfer(tx.source_chain, tx.target_chain, tx.amount,
                                                          tx.destination_address, tx.name, request_id=f"{tx.id}:bridge"))
        tx.cross_chain_transfer, tx.chain_transactions = transfer.name, transfer.chain_transactions
        if transfer.state == "COMPENSATED":
            raise _Fail(f"{transfer.name} was compensated: {transfer.failure_reason}")
        if transfer.state != "COMPLETED":
            # In progress, or FAILED: compensation did not finish and an operator must act. The
            # money stays held (neither lost nor spent); the item asks again later.
            await self._progress(tx)
            raise ServiceUnavailable(f"{transfer.name} is {transfer.state.lower()}: {transfer.failure_reason}",
                                     reason=f"TRANSFER_{transfer.state}")

    def _finish_gone(self, claimed: Claimed) -> None:
        with self.db.transaction() as connection:
            self.queue.done(connection, claimed)

    async def _keep_lease(self, claimed: Claimed) -> None:
        """While a saga runs, renew its item's lease, so no other worker takes it meanwhile."""
        interval = self.queue.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.db.run(self.queue.renew, claimed):
                    log.warning("transactions/%s: lease lost to another worker", claimed.item)
                    return
            except DomainError:
                pass            # the database is away: try again at the next beat

    async def work(self, stop: asyncio.Event, idle_seconds: float = 0.05) -> None:
        """One competing consumer of the queue, until `stop` is set."""
        while not stop.is_set():
            try:
                claimed = await self.db.run(self.queue.claim)
            except Exception:  # noqa: BLE001 - a database hiccup must not end the worker
                log.exception("could not claim work")
                claimed = None
            if claimed is None:
                try:
                    await asyncio.wait_for(stop.wait(), idle_seconds)
                except TimeoutError:
                    pass
                continue
            heartbeat = asyncio.get_running_loop().create_task(self._keep_lease(claimed))
            try:
                with self._tracing.processing(self.queue.name, str(claimed.id), claimed.traceparent,
                                              claimed.tracestate, attempt=claimed.attempts,
                                              conversation=f"transactions/{claimed.item}"):
                    await self.process(claimed)
            except Exception as exc:  # noqa: BLE001 - every failure puts the item back for later (or parks it)
                await self._failed(claimed, exc)
            finally:
                heartbeat.cancel()

    async def _failed(self, claimed: Claimed, exc: Exception) -> None:
        """An attempt failed: reschedule or park its item, and say which. When that cannot be
        written either (the database is away too), the item comes back by itself once its lease
        runs out; the worker goes on."""
        message = getattr(exc, "message", None) or repr(exc)
        try:
            retried = await self.db.run(self.queue.retry, claimed, message)
        except Exception:  # noqa: BLE001 - a database hiccup must not end the worker
            log.warning("transactions/%s: attempt %d failed (%s) and could not be rescheduled; it comes back "
                        "when its lease runs out", claimed.item, claimed.attempts, message, exc_info=True)
            return
        then = ("parked (the money stays held until a replay)" if retried.parked
                else "no longer ours: another worker holds it, or it was parked" if retried.lost
                else f"retrying in {retried.delay.total_seconds():.1f}s")
        log.log(logging.INFO if isinstance(exc, (ServiceUnavailable, DeadlineExceeded)) else logging.ERROR,
                "transactions/%s: attempt %d failed (%s); %s", claimed.item, claimed.attempts,
                message, then, exc_info=not isinstance(exc, DomainError))
