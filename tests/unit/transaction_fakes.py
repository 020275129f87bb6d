"""Hand-written fakes of the transaction service's ports, for the unit tests of its sagas and
use cases: the wallet, provider, chain and compliance clients (each answers from a script and records
every call), the repository and units of work (in memory, rolled back when the block raises),
the work queue, and a clock that moves only when told."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt

from services.domain.errors import AlreadyExists, NotFound, ResourceExhausted, Unimplemented
from services.domain.money import Money
from services.runtime.messaging.queue import MAX_ATTEMPTS, Claimed, ParkedItem, Retried
from services.transaction.domain import APPROVED, HELD, PENDING, PROCESSING, TERMINAL, Screened, Transaction
from services.transaction.ports import PaymentResult, ProviderTerms, TransferResult, WalletFacts

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def usd(amount: str) -> Money:
    return Money.parse("USD", amount)


class Clock:
    def __init__(self, now: dt.datetime = T0):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Script:
    """Answers popped in order (an exception is raised); once spent, `default` answers."""

    def __init__(self, default=None):
        self.answers: list = []
        self.default = default

    def next(self, *args):
        answer = self.answers.pop(0) if self.answers else self.default
        if isinstance(answer, Exception):
            raise answer
        return answer(*args) if callable(answer) else answer


class FakeWallet:
    """Wallets by name: (owner, currency, balance, available); holds made by request_id, as the
    wallet service makes them (the same key, the same hold)."""

    def __init__(self, **wallets: tuple[str, str, str, str]):
        self.wallets = {f"wallets/{name}": facts for name, facts in wallets.items()}
        self.asked: list = []              # each describe's wallet, each describe_all's list of wallets
        self.batch_unimplemented = False   # describe_all as a wallet of an older release answers it
        self.hold_calls: list[tuple[str, Money, str]] = []     # (source, amount, request_id)
        self.holds: dict[str, str] = {}                        # request_id -> hold name
        self.hold_script = Script()

    async def _describe(self, wallet: str) -> WalletFacts:
        if wallet not in self.wallets:
            raise NotFound(f"wallet {wallet} does not exist", reason="WALLET_NOT_FOUND")
        owner, currency, balance, available = self.wallets[wallet]
        return WalletFacts(owner, currency, Money.parse(currency, balance), Money.parse(currency, available))

    async def describe(self, wallet: str) -> WalletFacts:
        self.asked.append(wallet)
        return await self._describe(wallet)

    async def describe_all(self, wallets: list[str]) -> list[WalletFacts]:
        self.asked.append(list(wallets))
        if self.batch_unimplemented:
            raise Unimplemented("wallet.BatchGetWallets is not served here (an older release)")
        return [await self._describe(wallet) for wallet in wallets]

    async def hold(self, source: str, amount: Money, reference: str, request_id: str) -> str:
        self.hold_calls.append((source, amount, request_id))
        self.hold_script.next()
        return self.holds.setdefault(request_id, f"{source}/holds/h{len(self.holds) + 1}")


class FakeProviders:
    """Payments: each call answers the next scripted PaymentResult (or raises), by default SUCCEEDED.
    `require` knows every provider but those in `unknown`, and answers its `terms` (by default
    USD and EUR, both directions, no limits); None for those in `away` (it cannot say now)."""

    def __init__(self):
        self.unknown: set[str] = set()
        self.away: set[str] = set()
        self.terms: dict[str, ProviderTerms] = {}
        self.required: list[str] = []
        self.calls: list[tuple[bool, Money, str, str, str, str]] = []
        self.script = Script(lambda request_id: PaymentResult(f"payments/{request_id}", "SUCCEEDED",
                                                              "providers/alpha-pay", ""))

    async def pay(self, pay_in: bool, amount: Money, wallet: str, transaction: str, provider: str,
                  request_id: str) -> PaymentResult:
        self.calls.append((pay_in, amount, wallet, transaction, provider, request_id))
        return self.script.next(request_id)

    async def require(self, provider: str) -> ProviderTerms | None:
        self.required.append(provider)
        if provider in self.unknown:
            raise NotFound(f"provider {provider} does not exist", reason="PROVIDER_NOT_FOUND")
        if provider in self.away:
            return None
        return self.terms.get(provider) or ProviderTerms(provider, frozenset({"USD", "EUR"}),
                                                         frozenset({"PAY_IN", "PAY_OUT"}))


def payment(state: str, reason: str = "") -> PaymentResult:
    return PaymentResult("payments/p1", state, "providers/beta-ramp" if state == "SUCCEEDED" else "", reason)


class FakeChains:
    """Cross-chain transfers: each call answers the next scripted TransferResult, by default COMPLETED.
    `require` knows every chain but those in `unknown`."""

    def __init__(self):
        self.unknown: set[str] = set()
        self.calls: list[tuple[str, str, Money, str, str, str]] = []
        self.script = Script(lambda request_id: transfer("COMPLETED"))

    async def transfer(self, source_chain: str, target_chain: str, amount: Money, destination_address: str,
                       transaction: str, request_id: str) -> TransferResult:
        self.calls.append((source_chain, target_chain, amount, destination_address, transaction, request_id))
        return self.script.next(request_id)

    async def require(self, chain: str) -> None:
        if chain in self.unknown:
            raise NotFound(f"chain {chain} does not exist", reason="CHAIN_NOT_FOUND")


def transfer(state: str, reason: str = "") -> TransferResult:
    refs = [("chains/ethereum", "0xsource", 1), ("chains/polygon", "0xtarget", 2)] if state == "COMPLETED" else []
    return TransferResult("crossChainTransfers/x1", state, refs, reason)


class FakeCompliance:
    """Screenings as the compliance service makes them: one per transaction, each decided by the
    next scripted answer (a decision name, or an exception raised), by default APPROVED. Asked
    again with the same key, it answers its first answer again, even after a review (the real
    one stores the first response of each request_id); with another key, the screening as it is
    now. `review` decides a held one, as an operator would; `decision` reads it now."""

    def __init__(self):
        self.screen_calls: list[tuple[Transaction, str]] = []      # (a copy of the transaction, request_id)
        self.decision_calls: list[str] = []
        self.screenings: dict[str, Screened] = {}                   # by transaction name, as they are now
        self.first_answers: dict[str, Screened] = {}                # by request_id
        self.script = Script(APPROVED)
        self.decision_script = Script()                             # exceptions for `decision`, in order

    async def screen(self, tx: Transaction, request_id: str) -> Screened:
        self.screen_calls.append((copy.deepcopy(tx), request_id))
        decision = self.script.next()
        if tx.name not in self.screenings:
            reason = {APPROVED: "", HELD: "held for a compliance review"}.get(
                decision, "refused by compliance screening (sanctions)")
            self.screenings[tx.name] = Screened(f"screenings/s-{tx.id}", decision, reason)
        return self.first_answers.setdefault(request_id, self.screenings[tx.name])

    async def decision(self, screening: str) -> Screened:
        self.decision_calls.append(screening)
        self.decision_script.next()
        return next(s for s in self.screenings.values() if s.screening == screening)

    def review(self, tx: Transaction, decision: str) -> None:
        reason = "" if decision == APPROVED else "refused by a compliance review"
        self.screenings[tx.name] = dataclasses.replace(self.screenings[tx.name], decision=decision, reason=reason)


@dataclasses.dataclass
class State:
    """What the fake database holds."""
    transactions: dict[str, tuple[Transaction, str, str]] = dataclasses.field(default_factory=dict)  # owners too
    responses: dict[str, tuple[str, str, bytes]] = dataclasses.field(default_factory=dict)
    published: list[tuple[str, str, object]] = dataclasses.field(default_factory=list)
    queued: dict[str, int] = dataclasses.field(default_factory=dict)          # item -> priority
    leased: set[str] = dataclasses.field(default_factory=set)                # queued items being worked on
    parked: dict[str, ParkedItem] = dataclasses.field(default_factory=dict)


class FakeRepository:
    """The TransactionRepository's interface over `State`; it hands out copies, as rows would."""

    def __init__(self, state: State):
        self._state = state

    def add(self, tx: Transaction) -> None:
        assert tx.id not in self._state.transactions
        self._state.transactions[tx.id] = (copy.deepcopy(tx), tx.source_owner, tx.destination_owner)

    def save_progress(self, tx: Transaction) -> bool:
        stored, *owners = self._state.transactions[tx.id]
        if stored.state in TERMINAL:
            return False
        self._state.transactions[tx.id] = (dataclasses.replace(copy.deepcopy(tx), parked=None), *owners)
        return True

    def _visible(self, viewer) -> list[Transaction]:
        return [copy.deepcopy(tx) for tx, source, destination in self._state.transactions.values()
                if viewer is None or viewer.is_operator or viewer.id in (source, destination)]

    def get(self, transaction_id: str, viewer=None) -> Transaction | None:
        return next((tx for tx in self._visible(viewer) if tx.id == transaction_id), None)

    def newest(self, wallet: str, after, limit: int, viewer=None) -> list[Transaction]:
        found = sorted(self._visible(viewer), key=lambda tx: (tx.created_at, tx.id), reverse=True)
        found = [tx for tx in found if not wallet or wallet in (tx.source_wallet, tx.destination_wallet)]
        return [tx for tx in found if after is None or (tx.created_at, tx.id) < after][:limit]

    def incoming(self, wallet: str, currency: str) -> Money:
        return sum((tx.amount for tx, *_ in self._state.transactions.values()
                    if tx.destination_wallet == wallet and tx.state in (PENDING, PROCESSING)), Money.zero(currency))


class FakeUnit:
    def __init__(self, state: State, now: dt.datetime):
        self.repo, self.now, self._state = FakeRepository(state), now, state

    def publish(self, topic: str, subject: str, event) -> str:
        self._state.published.append((topic, subject, event))
        return f"event-{len(self._state.published)}"

    def enqueue(self, item: str, priority: int = 0, *, leased: bool = False) -> Claimed | None:
        self._state.queued[item] = priority
        if not leased:
            return None
        self._state.leased.add(item)
        return Claimed(len(self._state.queued), item, 1)

    def done(self, claimed: Claimed) -> None:
        self._state.queued.pop(claimed.item, None)
        self._state.leased.discard(claimed.item)

    def parked_in(self, items: list[str]) -> dict[str, ParkedItem]:
        return {item: self._state.parked[item] for item in items if item in self._state.parked}


class FakeUnits:
    """UnitsOfWork over `State`: a unit whose block raises leaves the state as it was."""

    def __init__(self, clock: Clock):
        self.state, self._clock = State(), clock
        self.units = 0                  # how many write units were committed

    def _unit(self, state) -> FakeUnit:
        """A unit over `state` (another service's fakes give their own repository)."""
        return FakeUnit(state, self._clock())

    @contextlib.contextmanager
    def begin(self):
        before = copy.deepcopy(self.state)
        try:
            yield self._unit(self.state)
        except BaseException:
            self.state.__dict__.update(before.__dict__)
            raise
        self.units += 1

    @contextlib.contextmanager
    def reading(self):
        yield self._unit(copy.deepcopy(self.state))

    def stored(self, operation: str, request_id: str, fingerprint: str) -> bytes | None:
        if request_id not in self.state.responses:
            return None
        if self.state.responses[request_id][:2] != (operation, fingerprint):
            raise AlreadyExists(f"request_id '{request_id}' was already used", reason="REQUEST_ID_REUSED")
        return self.state.responses[request_id][2]

    def stored_or_read(self, operation: str, request_id: str, fingerprint: str, read):
        first = self.stored(operation, request_id, fingerprint)
        with self.reading() as unit:
            return first, (read(unit) if first is None else None)

    def idempotent(self, operation, request_id, fingerprint, work, encode) -> bytes:
        with self.begin() as unit:
            stored = self.stored(operation, request_id, fingerprint)
            if stored is not None:
                return stored
            response = encode(work(unit))
            self.state.responses[request_id] = (operation, fingerprint, response)
            return response

    async def run(self, fn, *args):
        return fn(*args)


class FakeBacklog:
    """The Backlog's interface for the create use case: refuses while `full`, counts the places
    kept for requests being accepted and what it accepted."""

    def __init__(self):
        self.full, self.accepted_count, self.admitting = False, 0, 0

    @contextlib.contextmanager
    def admit(self):
        if self.full:
            raise ResourceExhausted("the backlog is full", reason="BACKLOG_FULL", retry_after_seconds=3)
        self.admitting += 1
        try:
            yield
        finally:
            self.admitting -= 1

    def accepted(self) -> None:
        self.accepted_count += 1


class FakeQueue:
    """The WorkQueue's interface for the workers, over the same `State`: claims what is not
    leased, in priority order (first queued first), retries right away, parks after `max_attempts`."""
    name = "financial.transactions"
    lease_seconds = 3600.0

    def __init__(self, units: FakeUnits, max_attempts: int = 3):
        self._units, self.max_attempts = units, max_attempts
        self.arrived = asyncio.Event()
        self.attempts: dict[str, int] = {}
        self.errors: list[tuple[str, str]] = []        # (item, error) of each failed attempt
        self.deferred: list[tuple[str, dt.timedelta, str]] = []     # (item, delay, note) of each deferral
        self.sleeping: set[str] = set()                              # deferred items, until `wake`
        self.forgiven: dict[str, int] = {}                           # attempts before the last deferral

    def anything_waiting(self) -> bool:
        state = self._units.state
        return any(item not in state.leased and item not in self.sleeping for item in state.queued)

    def claim(self) -> Claimed | None:
        state = self._units.state
        available = [item for item in state.queued if item not in state.leased and item not in self.sleeping]
        if not available:
            return None
        item = max(available, key=lambda i: state.queued[i])
        state.leased.add(item)
        self.attempts[item] = self.attempts.get(item, 0) + 1
        return Claimed(len(self.errors) + 1, item, self.attempts[item])

    def renew(self, claimed: Claimed) -> bool:
        return True

    def defer(self, claimed: Claimed, delay: dt.timedelta, note: str) -> Retried:
        """As the real one, the attempts so far forgiven; the item comes back only once `wake` is called."""
        self.deferred.append((claimed.item, delay, note))
        self._units.state.leased.discard(claimed.item)
        self.sleeping.add(claimed.item)
        self.forgiven[claimed.item] = claimed.attempts
        return Retried(delay=delay)

    def wake(self) -> None:
        """The deferred items' delays have passed."""
        self.sleeping.clear()

    def retry(self, claimed: Claimed, error: str) -> Retried:
        self.errors.append((claimed.item, error))
        self._units.state.leased.discard(claimed.item)
        if claimed.attempts - self.forgiven.get(claimed.item, 0) < self.max_attempts:
            return Retried(delay=dt.timedelta(0))
        state = self._units.state
        state.queued.pop(claimed.item)
        state.parked[claimed.item] = ParkedItem(7, self.name, claimed.item, 5, claimed.attempts, MAX_ATTEMPTS, error,
                                                T0, T0, "worker", None, "")
        return Retried(parked=state.parked[claimed.item])
