"""What every transaction type's saga is made of, and what it may call.

A `Saga` is one object per transaction type: which request fields the type needs (`fields`)
and its own checks of them (`check_values`), its creation-time checks against the wallets
(`admit`, built from `Admission`'s checks), its queue priority, and its steps (`run`, over
the upstream ports in `SagaContext`). `run` returns when the saga has COMPLETED; it raises
`Fail` when it has definitively failed, `Waiting` when it waits for something outside it (a
compliance review), and anything else when a step may have happened (the worker asks again
later, and every step is idempotent by a key made of the transaction id). Before any saga runs,
the worker screens the transaction (screening.py).
No grpc and no SQL here: the ports are the service's clients, or fakes in the unit tests.
"""
from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Awaitable, Callable

from services.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from services.domain.money import Money, require_balance_room

from ..domain import PENDING, PROCESSING, Transaction

if TYPE_CHECKING:
    from ..ports import ChainPort, CompliancePort, ProviderPort, Viewer, WalletFacts, WalletPort

# A field's rule in `Saga.fields`: the type needs it, or it must be left empty; a field the
# type does not name is optional.
REQUIRED, EMPTY = "required", "empty"
FIELDS = ("source_wallet", "destination_wallet", "provider", "source_chain", "target_chain", "destination_address")


class Fail(Exception):
    """The saga ends FAILED with this reason (whatever it held is released on the event)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Waiting(Exception):
    """The saga waits for something outside it (an operator's review): its worker looks again
    after `delay`. Not a failure: its work item's retry policy starts again (WorkQueue.defer),
    and its trace shows no error."""

    def __init__(self, message: str, delay: dt.timedelta):
        super().__init__(message)
        self.message, self.delay = message, delay


@dataclasses.dataclass(frozen=True)
class SagaContext:
    """What a saga's steps call, and how they record their progress."""
    wallet: WalletPort
    providers: ProviderPort | None
    chains: ChainPort | None
    clock: Callable[[], dt.datetime]
    save: Callable[[Transaction], Awaitable[None]]      # writes the transaction's progress now
    compliance: CompliancePort | None = None

    async def progress(self, tx: Transaction, **changes) -> None:
        """A step is done: PROCESSING, with what it made (a hold, a payment, a transfer), written."""
        for key, value in changes.items():
            setattr(tx, key, value)
        if tx.state == PENDING:
            tx.move_to(PROCESSING, self.clock())
        tx.updated_at = self.clock()
        await self.save(tx)


class Admission:
    """The creation-time checks a saga's `admit` is made of, for one draft and one viewer: the
    wallets exist (someone else's own wallet is NOT_FOUND, worded like a missing one, before
    anything else about it is said), hold the draft's currency, the source has the funds, and the
    destination has room below its currency's max_balance; and the provider or chains it names
    exist (the provider takes the payment)."""

    def __init__(self, draft: Transaction, viewer: Viewer | None, wallet: WalletPort,
                 incoming: Callable[[str, str], Awaitable[Money]], providers: ProviderPort | None = None,
                 chains: ChainPort | None = None):
        self._draft, self._viewer, self._wallet, self._incoming = draft, viewer, wallet, incoming
        self._providers, self._chains = providers, chains
        self._on_its_way: Money | None = None

    async def provider(self, pay_in: bool) -> None:
        """The provider the draft names, if any, exists (NOT_FOUND from the provider service) and
        takes this payment: the draft's currency, its direction (pay-in or pay-out), an amount
        within its minimum and maximum for that currency (INVALID_ARGUMENT naming the field,
        reason PROVIDER_CANNOT_PAY). When the provider service cannot answer now, the saga finds
        out."""
        draft = self._draft
        if not draft.provider or self._providers is None:
            return
        terms = await self._providers.require(draft.provider)
        if terms is None:
            return
        name, currency, amount = draft.provider, draft.amount.currency, draft.amount.amount
        low, high = terms.minimum.get(currency), terms.maximum.get(currency)
        if terms.currencies and currency not in terms.currencies:
            field, problem = "transaction.provider", (f"{name} does not handle {currency} "
                                                      f"(it handles {', '.join(sorted(terms.currencies))})")
        elif terms.directions and ("PAY_IN" if pay_in else "PAY_OUT") not in terms.directions:
            field, problem = "transaction.provider", f"{name} takes no {'pay-ins' if pay_in else 'pay-outs'}"
        elif low is not None and amount < low:
            field, problem = "transaction.amount.amount", f"{name} takes at least {low:f} {currency}, not {draft.amount}"
        elif high is not None and amount > high:
            field, problem = "transaction.amount.amount", f"{name} takes at most {high:f} {currency}, not {draft.amount}"
        else:
            return
        raise InvalidArgument.field(field, problem, reason="PROVIDER_CANNOT_PAY", metadata={"provider": name})

    async def chains(self) -> None:
        """The draft's source and target chains exist (as `provider()`, from the blockchain service)."""
        if self._chains is not None:
            for chain in (self._draft.source_chain, self._draft.target_chain):
                await self._chains.require(chain)

    async def _facts(self, name: str, field: str, own: bool) -> WalletFacts:
        try:
            facts = await self._wallet.describe(name)
        except NotFound:
            facts = None
        return self._judge(facts, name, field, own)

    def _judge(self, facts: WalletFacts | None, name: str, field: str, own: bool) -> WalletFacts:
        if facts is None or (own and self._viewer is not None and not self._viewer.may_see(facts.owner)):
            raise NotFound(f"wallet {name} does not exist", reason="WALLET_NOT_FOUND")
        currency = self._draft.amount.currency
        if facts.currency != currency:
            raise InvalidArgument.field(field, f"{name} holds {facts.currency}, not {currency}")
        return facts

    async def source(self) -> WalletFacts:
        """The wallet the money leaves: the user's own."""
        return await self._facts(self._draft.source_wallet, "transaction.source_wallet", own=True)

    async def destination(self, own: bool) -> WalletFacts:
        """The wallet the money arrives in (`own`: it must be the user's)."""
        # What is on its way is read before the balance, so one that the wallet settles in
        # between is counted twice (too careful) rather than missed. Not counted: a transaction
        # COMPLETED whose event the wallet has not handled yet; decision 24 bounds what that adds.
        self._on_its_way = await self._incoming(self._draft.destination_wallet, self._draft.amount.currency)
        return await self._facts(self._draft.destination_wallet, "transaction.destination_wallet", own)

    async def source_and_destination(self, own_destination: bool) -> tuple[WalletFacts, WalletFacts]:
        """`source()` and `destination(own_destination)`, both wallets read in one call. When one
        of them is missing, or the wallet service is of a release without the batched read, each
        is asked on its own, so the error names the right one, the source's first."""
        draft = self._draft
        self._on_its_way = await self._incoming(draft.destination_wallet, draft.amount.currency)
        try:
            source, destination = await self._wallet.describe_all([draft.source_wallet, draft.destination_wallet])
        except (NotFound, Unimplemented):
            source = await self._facts(draft.source_wallet, "transaction.source_wallet", own=True)
            return source, await self._facts(draft.destination_wallet, "transaction.destination_wallet",
                                             own_destination)
        return (self._judge(source, draft.source_wallet, "transaction.source_wallet", own=True),
                self._judge(destination, draft.destination_wallet, "transaction.destination_wallet",
                            own_destination))

    def funds(self, source: WalletFacts) -> None:
        """The source wallet (as `source()` found it) has the amount available. The hold that
        the saga places is what really reserves it: this only refuses early what would fail."""
        draft = self._draft
        if source.available < draft.amount:
            raise FailedPrecondition(
                f"insufficient funds in {draft.source_wallet}: available {source.available.text} "
                f"{draft.amount.currency}, {draft.amount} needed", reason="INSUFFICIENT_FUNDS",
                metadata={"wallet": draft.source_wallet})

    async def out_of_the_platform(self) -> tuple[str, str]:
        """The checks of a type whose money leaves the platform from the user's own wallet: the
        source is theirs and has the funds. (source owner, no destination owner)."""
        source = await self.source()
        self.funds(source)
        return source.owner, ""

    def room(self, destination: WalletFacts) -> None:
        """The destination's balance, what is already on its way to it and the amount stay within
        its max_balance: nothing accepted can fail to settle for a limit later."""
        viewer = self._viewer
        require_balance_room(self._draft.destination_wallet, destination.balance, self._on_its_way, self._draft.amount,
                             disclose=viewer is None or viewer.may_see(destination.owner))


class Saga(abc.ABC):
    """One transaction type. Subclasses set `type`, `fields`, `priority`, and write `admit` and `run`."""
    type: str
    fields: dict[str, str] = {}
    priority: int = 5               # on the work queue; higher first

    def check(self, draft: Transaction) -> None:
        """The draft's fields for this type: each one the type needs is there, each one it leaves
        empty is empty, then the type's own checks."""
        for field in FIELDS:
            rule, value = self.fields.get(field), getattr(draft, field)
            if rule == REQUIRED and not value:
                raise InvalidArgument.field(f"transaction.{field}", f"is required for {self.type}")
            if rule == EMPTY and value:
                raise InvalidArgument.field(f"transaction.{field}", f"must be empty for {self.type}")
        self.check_values(draft)

    def check_values(self, draft: Transaction) -> None:
        """The type's own checks of the draft's values (INVALID_ARGUMENT naming the field); none by default."""
        return None

    @abc.abstractmethod
    async def admit(self, draft: Transaction, wallets: Admission) -> tuple[str, str]:
        """The creation-time checks against the wallets (and the provider or chains the draft
        names); (source owner, destination owner)."""

    @abc.abstractmethod
    async def run(self, tx: Transaction, context: SagaContext) -> None:
        """The steps, from wherever the transaction is (a retry finds what earlier attempts made)."""
