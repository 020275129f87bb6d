"""Multi-chain coordination: the chain registry (health, a breaker per chain, consolidated status
of a transaction hash over every chain at once) and the cross-chain transfer saga. No grpc.

  status     every chain (or the ones asked) at once, each under its own timeout; a chain that
             fails or hangs is reported beside the others and makes the answer partial, never an error
  transfer   SOURCE lock -> BRIDGE relay -> TARGET mint, each persisted as soon as it is done,
             each idempotent by its key "{transfer}:{step}", so a crash resumes without doing
             anything twice. A step that fails is compensated backwards (cancel the bridge
             message, refund the lock). A step that timed out may have happened: it is asked once
             more with the same key first. The mint on the target chain is the pivot: when it may
             have happened it is never compensated (that could pay twice), only asked again later.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import AsyncIterator, Awaitable, Callable, Iterable, TypeVar

from sqlalchemy import Connection, insert, select, update

from services.domain.chains import address_problem
from services.domain.clock import utcnow
from services.domain.errors import DomainError, InvalidArgument, NotFound, ServiceUnavailable
from services.domain.money import Money
from services.runtime.breaker import CLOSED, OPEN, AsyncCircuitBreaker
from services.runtime.db import Database, as_utc
from services.runtime.idempotency import run_idempotent, stored_response
from services.runtime.outcomes import CallOutcomes, check_every
from services.simulation import Faults, fault_switch

from .adapters import (
    BRIDGE,
    NOT_FOUND,
    SOURCE,
    STEPS,
    TARGET,
    ChainAdapter,
    ChainError,
    ChainRejected,
    ChainTimeout,
    ChainTx,
    TxStatus,
)
from .tables import cross_chain_transfers, idempotency_keys
from .transfers import COMPENSATED, COMPLETED, FAILED, IN_PROGRESS, NO_STEP, PENDING, TERMINAL, Compensation, Transfer

log = logging.getLogger("diboas.blockchain")
T = TypeVar("T")

# Chain health (ChainRegistry.state) and consolidated statuses beyond a chain's own (adapters.py).
UNCHECKED, HEALTHY, DEGRADED, UNAVAILABLE = "UNSPECIFIED", "HEALTHY", "DEGRADED", "UNAVAILABLE"
UNKNOWN = "UNKNOWN"
OPERATION = "ExecuteCrossChainTransfer"


# --- the registry ------------------------------------------------------------------------------

@dataclass
class ChainHealth(CallOutcomes):
    checked: bool = False                    # a check has run
    answered: bool = False                   # the last check got an answer
    latest_block: int = 0                    # as of the last answered check
    last_check: dt.datetime | None = None
    last_check_latency: float = 0.0


@dataclass(frozen=True)
class ChainAnswer:
    """What one chain said about a hash (answered=False: it failed or timed out; see error)."""

    chain: str
    answered: bool
    error: str
    status: TxStatus
    required_confirmations: int


@dataclass(frozen=True)
class StatusReport:
    transaction_hash: str
    status: str                   # a chain's status (adapters.py) when found; else NOT_FOUND or UNKNOWN
    chain: str                    # the chain that holds it; "" when none
    confirmations: int
    required_confirmations: int
    finalized: bool
    answers: list[ChainAnswer]    # every chain asked, in the order asked
    partial: bool                 # some chain could not answer


def _failure(exc: BaseException) -> bool:
    """What counts against a chain's breaker: it failed or did not answer (a revert is an answer)."""
    return isinstance(exc, (ChainError, TimeoutError)) and not isinstance(exc, ChainRejected)


class ChainRegistry:
    def __init__(self, adapters: Iterable[ChainAdapter], *, call_timeout: float = 1.0, slow_seconds: float = 0.5,
                 breaker_fail_max: int = 5, breaker_reset_seconds: float = 10.0):
        self.adapters: dict[str, ChainAdapter] = {a.name: a for a in adapters}
        self.call_timeout, self.slow_seconds = call_timeout, slow_seconds
        self.health = {name: ChainHealth() for name in self.adapters}
        self.breakers = {name: AsyncCircuitBreaker(f"chain {name}", breaker_fail_max, breaker_reset_seconds,
                                                   is_failure=_failure) for name in self.adapters}

    @property
    def names(self) -> list[str]:
        return sorted(self.adapters)

    def adapter(self, name: str) -> ChainAdapter:
        try:
            return self.adapters[name]
        except KeyError:
            raise NotFound(f"chain chains/{name} does not exist (known: {', '.join(self.names)})",
                           reason="CHAIN_NOT_FOUND") from None

    def state(self, name: str) -> str:
        """HEALTHY, DEGRADED (slow, or some calls fail), UNAVAILABLE (no answer, breaker open) or UNSPECIFIED."""
        health, breaker = self.health[name], self.breakers[name]
        if not health.checked:
            return UNCHECKED
        if not health.answered or breaker.state == OPEN:
            return UNAVAILABLE
        if health.last_check_latency > self.slow_seconds or health.success_rate < 0.9 or breaker.state != CLOSED:
            return DEGRADED
        return HEALTHY

    async def call(self, name: str, operation: Callable[[ChainAdapter], Awaitable[T]], timeout: float | None = None,
                   guarded: bool = True) -> T:
        """One call to a chain under a timeout (TimeoutError), through its breaker when `guarded`
        (ServiceUnavailable at once while it is open); the outcome counts toward its health."""
        adapter, health = self.adapter(name), self.health[name]
        timeout = timeout or self.call_timeout
        started = time.monotonic()
        try:
            if guarded:
                async with self.breakers[name].guard():
                    result = await asyncio.wait_for(operation(adapter), timeout)
            else:
                result = await asyncio.wait_for(operation(adapter), timeout)
        except ChainRejected:
            health.record(True, time.monotonic() - started)       # a revert is the chain working
            raise
        except (ChainError, TimeoutError) as exc:
            health.record(False, message=str(exc) or f"no answer within {timeout:g}s")
            raise
        health.record(True, time.monotonic() - started)
        return result

    # --- health ---------------------------------------------------------------------------------

    async def check(self, name: str, timeout: float | None = None) -> ChainHealth:
        """Ask one chain for its latest block now and record the answer."""
        adapter, health = self.adapter(name), self.health[name]
        timeout = timeout or self.call_timeout
        started = time.monotonic()
        try:
            block = await asyncio.wait_for(adapter.latest_block(), timeout)
        except (ChainError, TimeoutError) as exc:
            health.answered, health.message = False, str(exc) or f"no answer within {timeout:g}s"
            health.consecutive_failures += 1
            log.warning("chain %s is unavailable: %s", name, health.message, extra={"chain": name})
        else:
            health.answered, health.latest_block, health.message = True, block, ""
            health.consecutive_failures = 0
        health.checked, health.last_check = True, utcnow()
        health.last_check_latency = time.monotonic() - started
        return health

    async def check_unchecked(self, names: Iterable[str] | None = None) -> None:
        """Check, at once, the chains that were never checked."""
        await asyncio.gather(*(self.check(n) for n in (self.adapters if names is None else names)
                               if not self.health[n].checked))

    async def watch(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        """Check every chain every `interval` seconds until `stop` is set."""
        await check_every(interval, stop, lambda: asyncio.gather(*(self.check(name) for name in self.adapters)))

    # --- consolidated status --------------------------------------------------------------------

    async def _ask(self, name: str, tx_hash: str, timeout: float) -> ChainAnswer:
        required = self.adapters[name].required_confirmations
        try:
            status = await self.call(name, lambda a: a.status(tx_hash), timeout)
        except TimeoutError:
            error = f"chains/{name} gave no answer within {timeout:g}s"
        except ChainError as exc:
            error = str(exc) or f"chains/{name} failed"
        except ServiceUnavailable as exc:                 # its breaker is open
            error = exc.message
        else:
            return ChainAnswer(name, True, "", status, required)
        return ChainAnswer(name, False, error, TxStatus(False, NOT_FOUND, 0, 0), required)

    async def transaction_status(self, tx_hash: str, chains: Iterable[str] = (), timeout: float | None = None) -> StatusReport:
        """Ask every chain (or `chains`) about `tx_hash` at once and consolidate: found somewhere ->
        that chain's status; else NOT_FOUND when some chain answered, UNKNOWN when none could."""
        if not tx_hash:
            raise InvalidArgument.field("transaction_hash", "is required")
        if len(tx_hash) > 128:
            raise InvalidArgument.field("transaction_hash", f"is {len(tx_hash)} characters long; at most 128")
        names = list(dict.fromkeys(chains)) or self.names
        for name in names:
            self.adapter(name)
        answers = await asyncio.gather(*(self._ask(n, tx_hash, timeout or self.call_timeout) for n in names))
        partial = not all(a.answered for a in answers)
        found = next((a for a in answers if a.status.found), None)
        if found is None:
            status = NOT_FOUND if any(a.answered for a in answers) else UNKNOWN
            return StatusReport(tx_hash, status, "", 0, 0, False, answers, partial)
        confirmations = found.status.confirmations
        return StatusReport(tx_hash, found.status.status, found.chain, confirmations, found.required_confirmations,
                            found.status.block_number > 0 and confirmations >= found.required_confirmations,
                            answers, partial)


# --- persistence -------------------------------------------------------------------------------

def _tx(chain: str, tx_hash: str | None, block: int | None) -> ChainTx | None:
    return None if tx_hash is None else ChainTx(chain, tx_hash, block or 0)


def _compensations_json(items: list[Compensation]) -> str:
    return json.dumps([{"step": c.step, "chain": c.transaction.chain, "hash": c.transaction.hash,
                        "block": c.transaction.block, "reason": c.reason, "created_at": c.created_at.isoformat()}
                       for c in items])


def _compensations(text: str) -> list[Compensation]:
    return [Compensation(c["step"], ChainTx(c["chain"], c["hash"], c["block"]), c["reason"],
                         dt.datetime.fromisoformat(c["created_at"])) for c in json.loads(text)]


def _row(row) -> Transfer:
    return Transfer(
        id=row.id, source_chain=row.source_chain, target_chain=row.target_chain, amount=Money(row.currency, row.amount),
        destination_address=row.destination_address, transaction=row.transaction_name, state=row.state,
        current_step=row.current_step, created_at=as_utc(row.created_at), updated_at=as_utc(row.updated_at),
        completed_at=as_utc(row.completed_at), source_tx=_tx(row.source_chain, row.source_tx_hash, row.source_tx_block),
        bridge_tx=_tx(row.source_chain, row.bridge_tx_hash, row.bridge_tx_block),
        target_tx=_tx(row.target_chain, row.target_tx_hash, row.target_tx_block),
        compensations=_compensations(row.compensations), failure_reason=row.failure_reason,
        compensating=row.compensating, outcome_unknown=row.outcome_unknown, last_error=row.last_error,
        attempts=row.attempts)


def _changes(t: Transfer) -> dict:
    """The columns that change during a transfer's life."""
    values = {"state": t.state, "current_step": t.current_step, "compensating": t.compensating,
              "outcome_unknown": t.outcome_unknown, "compensations": _compensations_json(t.compensations),
              "failure_reason": t.failure_reason, "last_error": t.last_error, "attempts": t.attempts,
              "updated_at": t.updated_at, "completed_at": t.completed_at}
    for step, tx in (("source", t.source_tx), ("bridge", t.bridge_tx), ("target", t.target_tx)):
        values[f"{step}_tx_hash"], values[f"{step}_tx_block"] = (tx.hash, tx.block) if tx else (None, None)
    return values


# --- the saga ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Outcome:
    tx: ChainTx | None = None
    message: str = ""
    rejected: bool = False        # the chain refused for good: nothing was done under the key
    timed_out: bool = False
    unknown: bool = False         # the step may have taken effect anyway


class TransferCoordinator:
    """Cross-chain transfers: create (idempotent by request_id), drive, read, resume."""

    def __init__(self, db: Database, registry: ChainRegistry, *, step_timeout: float = 1.0,
                 compensation_attempts: int = 5, compensation_backoff: float = 0.05, resume_concurrency: int = 8,
                 clock: Callable[[], dt.datetime] = utcnow, ids: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.db, self.registry = db, registry
        self.step_timeout = step_timeout
        self.compensation_attempts, self.compensation_backoff = compensation_attempts, compensation_backoff
        self._resume_concurrency = resume_concurrency
        self._clock, self._ids = clock, ids
        self._locks: dict[str, list] = {}            # transfer id -> [asyncio.Lock, users]
        self._tasks: set[asyncio.Task] = set()       # drives running beside the requests that started them

    # --- requests -------------------------------------------------------------------------------

    def check_request(self, source_chain: str, target_chain: str, amount: Money, destination_address: str) -> None:
        """INVALID_ARGUMENT or NOT_FOUND naming what is wrong; nothing is written before this passes."""
        self.registry.adapter(source_chain)
        self.registry.adapter(target_chain)
        if source_chain == target_chain:
            raise InvalidArgument.field("target_chain", f"must differ from source_chain (both are chains/{source_chain})")
        amount.require_positive("amount.amount")
        problem = address_problem(destination_address)
        if problem:
            raise InvalidArgument.field("destination_address", problem)

    async def execute(self, request_id: str, source_chain: str, target_chain: str, amount: Money,
                      destination_address: str, transaction: str = "", *, fingerprint: str | None = None,
                      wait: float | None = None) -> Transfer:
        """Create the transfer (a repeated request_id gets the first one; with another request,
        ALREADY_EXISTS) and drive it; the transfer as it is when it is terminal, or after `wait`
        seconds (the drive goes on in the background)."""
        if not request_id or len(request_id) > 128:
            raise InvalidArgument.field("request_id", "is required: a unique key of up to 128 characters per request")
        fingerprint = fingerprint or hashlib.sha256("|".join(
            (source_chain, target_chain, amount.currency, amount.text, destination_address, transaction)).encode()).hexdigest()
        # A repeat finds its transfer before anything is checked again: a rule or a chain list that
        # changed since must not refuse a transfer that exists (its steps may have happened).
        first = await self.db.run(self._stored, request_id, fingerprint)
        if first is None:
            self.check_request(source_chain, target_chain, amount, destination_address)

        def work(connection: Connection, now: dt.datetime) -> Transfer:
            t = Transfer(self._ids(), source_chain, target_chain, amount, destination_address, transaction, PENDING,
                         NO_STEP, now, now)
            connection.execute(insert(cross_chain_transfers).values(
                id=t.id, source_chain=source_chain, target_chain=target_chain, currency=amount.currency,
                amount=amount.amount, destination_address=destination_address, transaction_name=transaction,
                created_at=now, **_changes(t)))
            return t
        stored = first or await self.db.run(run_idempotent, self.db, idempotency_keys, OPERATION, request_id,
                                            fingerprint, work, lambda t: t.id.encode(), self._clock)
        transfer_id = stored.decode()
        task = self._spawn(self.drive(transfer_id), transfer_id)
        if wait is not None and wait <= 0:
            return await self.get(transfer_id)
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            return await self.get(transfer_id)

    def _stored(self, request_id: str, fingerprint: str) -> bytes | None:
        with self.db.reading() as connection:
            return stored_response(connection, idempotency_keys, OPERATION, request_id, fingerprint)

    async def get(self, transfer_id: str) -> Transfer:
        transfer = await self.db.run(self._load, transfer_id)
        if transfer is None:
            raise NotFound(f"cross-chain transfer crossChainTransfers/{transfer_id} does not exist",
                           reason="CROSS_CHAIN_TRANSFER_NOT_FOUND")
        return transfer

    async def set_faults(self, request_id: str, fingerprint: str, chain: str, faults: Faults,
                         encode: Callable[[str], bytes]) -> bytes:
        """Replace a simulated chain's faults (idempotent by request_id: a repeat changes nothing
        and gets the first answer); `encode(chain)` makes the answer."""
        switch = fault_switch(self.registry.adapter(chain), f"chains/{chain}")

        def work(connection: Connection, now: dt.datetime) -> str:
            switch.faults = faults
            log.warning("chains/%s: simulated faults are now %s", chain, faults, extra={"chain": chain})
            return chain
        return await self.db.run(run_idempotent, self.db, idempotency_keys, "SetChainFaults", request_id, fingerprint,
                                 work, encode, self._clock)

    # --- persistence ----------------------------------------------------------------------------

    def _load(self, transfer_id: str) -> Transfer | None:
        with self.db.reading() as connection:
            row = connection.execute(select(cross_chain_transfers).where(cross_chain_transfers.c.id == transfer_id)).first()
        return _row(row) if row else None

    def _store(self, t: Transfer) -> None:
        with self.db.transaction() as connection:
            connection.execute(update(cross_chain_transfers).where(cross_chain_transfers.c.id == t.id).values(**_changes(t)))

    async def _save(self, t: Transfer) -> None:
        await self.db.run(self._store, t)

    def _unfinished(self) -> list[str]:
        c = cross_chain_transfers.c
        with self.db.reading() as connection:
            return list(connection.execute(select(c.id).where(c.state.not_in(TERMINAL)).order_by(c.created_at)).scalars())

    # --- driving --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _serialized(self, transfer_id: str) -> AsyncIterator[None]:
        """One drive of a transfer at a time in this process."""
        entry = self._locks.setdefault(transfer_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(transfer_id, None)

    def _spawn(self, work: Awaitable[Transfer], transfer_id: str) -> asyncio.Task:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def finished(done: asyncio.Task) -> None:
            self._tasks.discard(done)
            if not done.cancelled() and done.exception() is not None:
                exc = done.exception()
                log.log(logging.WARNING if isinstance(exc, DomainError) else logging.ERROR,
                        "crossChainTransfers/%s: drive stopped: %s", transfer_id, getattr(exc, "message", None) or exc,
                        exc_info=not isinstance(exc, DomainError))
        task.add_done_callback(finished)
        return task

    async def drive(self, transfer_id: str) -> Transfer:
        """Take the transfer as far as it can go now: terminal, or IN_PROGRESS waiting for a target
        chain that did not answer. Safe to call any number of times, from anywhere."""
        async with self._serialized(transfer_id):
            t = await self.get(transfer_id)
            if t.state in TERMINAL:
                return t
            return await self._advance(t)

    async def _advance(self, t: Transfer) -> Transfer:
        # A step that was started before (by a drive that crashed, or one that got no answer)
        # may have taken effect: failing now without an answer does not prove it did not.
        started_before = t.current_step if t.state == IN_PROGRESS and not t.compensating else None
        t.attempts += 1
        if not t.compensating:
            for step in STEPS:
                if t.done(step) is not None:
                    continue
                if (t.state, t.current_step) != (IN_PROGRESS, step):
                    t.start(step, self._clock())
                    await self._save(t)
                outcome = await self._perform(t, step, maybe_done=started_before == step)
                if outcome.tx is not None:
                    t.record(step, outcome.tx, self._clock())
                    await self._save(t)
                    continue
                if step == TARGET and outcome.unknown:
                    t.last_error = (f"the mint on chains/{t.target_chain} is unconfirmed ({outcome.message}); it may have "
                                    "happened, so nothing is refunded: it is asked again later with the same key")
                    t.updated_at = self._clock()
                    await self._save(t)
                    log.warning("%s: %s", t.name, t.last_error, extra={"transfer": t.id})
                    return t
                t.fail_step(f"{step} step on chains/{t.chain_of(step)} failed: {outcome.message}", outcome.unknown,
                            self._clock())
                await self._save(t)
                log.info("%s: %s; compensating", t.name, t.failure_reason, extra={"transfer": t.id})
                break
            else:
                t.finish(COMPLETED, self._clock())
                await self._save(t)
                return t
        return await self._compensate(t)

    def _step_call(self, t: Transfer, step: str) -> Callable[[ChainAdapter], Awaitable[ChainTx]]:
        key = t.key(step)
        if step == SOURCE:
            return lambda chain: chain.lock(t.amount, key)
        if step == BRIDGE:
            return lambda chain: chain.relay(t.amount, key, t.target_chain)
        return lambda chain: chain.mint(t.amount, key, t.destination_address)

    def _undo_call(self, t: Transfer, step: str) -> Callable[[ChainAdapter], Awaitable[ChainTx | None]]:
        key = t.key(step)
        if step == BRIDGE:
            return lambda chain: chain.revert_relay(key)
        return lambda chain: chain.unlock(key)

    async def _attempt(self, t: Transfer, step: str) -> _Outcome:
        chain = t.chain_of(step)
        try:
            return _Outcome(tx=await self.registry.call(chain, self._step_call(t, step), self.step_timeout))
        except ChainRejected as exc:
            return _Outcome(message=str(exc), rejected=True)
        except (ChainTimeout, TimeoutError) as exc:
            return _Outcome(message=str(exc) or f"chains/{chain} gave no answer within {self.step_timeout:g}s",
                            timed_out=True)
        except ChainError as exc:
            return _Outcome(message=str(exc) or f"chains/{chain} failed")
        except ServiceUnavailable as exc:                  # the chain's breaker is open: nothing was sent
            return _Outcome(message=exc.message)

    async def _perform(self, t: Transfer, step: str, maybe_done: bool) -> _Outcome:
        """One step: a transaction, or why not (and whether it may have happened anyway)."""
        first = await self._attempt(t, step)
        if first.tx is not None or first.rejected:
            return first
        if first.timed_out:        # ambiguous: ask once more with the same key before giving up
            second = await self._attempt(t, step)
            if second.tx is not None or second.rejected:
                return second
            return _Outcome(message=f"{first.message}, and again when asked once more ({second.message})", unknown=True)
        return replace(first, unknown=maybe_done)

    async def _compensate(self, t: Transfer) -> Transfer:
        """Undo the done steps, latest first, each tried a few times; COMPENSATED, or FAILED for an operator."""
        for step in t.to_undo():
            if t.compensated(step):
                continue
            key, undo = t.key(step), self._undo_call(t, step)
            error = ""
            for attempt in range(self.compensation_attempts):
                if attempt:
                    await asyncio.sleep(self.compensation_backoff * 2 ** (attempt - 1))
                try:   # not through the breaker: a refund is tried even while the chain looks down
                    tx = await self.registry.call(t.source_chain, undo, self.step_timeout, guarded=False)
                except (ChainError, TimeoutError) as exc:
                    error = str(exc) or f"chains/{t.source_chain} gave no answer within {self.step_timeout:g}s"
                    continue
                error = ""
                break
            if error:
                what = "cancelling the bridge message" if step == BRIDGE else "refunding the lock"
                t.finish(FAILED, self._clock(),
                         f"{t.failure_reason}; then {what} {key} on chains/{t.source_chain} failed "
                         f"{self.compensation_attempts} times ({error}): {t.amount} may still be locked on "
                         f"chains/{t.source_chain}, an operator must finish the compensation")
                await self._save(t)
                log.error("%s: %s", t.name, t.failure_reason, extra={"transfer": t.id, "alert": "compensation_failed"})
                return t
            if tx is not None:
                t.compensations.append(Compensation(step, tx, t.failure_reason, self._clock()))
                t.updated_at = self._clock()
                await self._save(t)
        t.finish(COMPENSATED, self._clock())
        await self._save(t)
        return t

    # --- in the background ----------------------------------------------------------------------

    async def resume_once(self) -> int:
        """Drive every transfer that is not terminal and not being driven now; how many."""
        ids = [i for i in await self.db.run(self._unfinished) if i not in self._locks]
        if not ids:
            return 0
        limit = asyncio.Semaphore(self._resume_concurrency)

        async def one(transfer_id: str) -> Transfer:
            async with limit:
                return await self.drive(transfer_id)
        await asyncio.gather(*(self._spawn(one(i), i) for i in ids), return_exceptions=True)
        return len(ids)

    async def resume(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        """Background work: at start-up, and then every `interval` seconds, drive the transfers
        that are not terminal (after a crash; a mint that did not answer). At `stop`, drives still
        running are cancelled: they resume at the next start, without repeating what was done."""
        try:
            while not stop.is_set():
                try:
                    resumed = await self.resume_once()
                    if resumed:
                        log.info("resumed %d cross-chain transfers", resumed)
                except Exception:  # noqa: BLE001 - a database hiccup must not end the loop
                    log.exception("could not resume cross-chain transfers")
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass
        finally:
            await self.close()

    async def close(self, grace: float = 1.0) -> None:
        """Let running drives finish for up to `grace` seconds, then cancel them."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

