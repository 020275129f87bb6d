"""What the transaction service's use cases and sagas need from the other services, as domain
values: the wallet, the provider, the blockchain and the compliance ports. `wallet_client.py` and `partners.py`
implement them over the mesh (their upstreams are a channel, or in the same process the other
service's servicer); the unit tests implement them with fakes. No grpc, no protobuf, no SQL."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from services.domain.money import Money

if TYPE_CHECKING:
    from .domain import Screened, Transaction


@dataclass(frozen=True)
class WalletFacts:
    owner: str
    currency: str
    balance: Money              # available + held
    available: Money            # what can be spent now


@dataclass(frozen=True)
class PaymentResult:
    name: str                   # "payments/{id}"
    state: str                  # PENDING, SUCCEEDED, FAILED
    provider: str               # "providers/{id}" that executed it; empty unless SUCCEEDED
    failure_reason: str


@dataclass(frozen=True)
class ProviderTerms:
    """What one provider takes, as the provider service describes it."""
    name: str                   # "providers/{id}"
    currencies: frozenset[str]
    directions: frozenset[str]  # PAY_IN, PAY_OUT
    minimum: dict[str, Decimal] = field(default_factory=dict)   # per currency that has such a limit
    maximum: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class TransferResult:
    name: str                   # "crossChainTransfers/{id}"
    state: str                  # PENDING, IN_PROGRESS, COMPLETED, COMPENSATED, FAILED
    chain_transactions: list[tuple[str, str, int]]    # (chain, hash, block): source, bridge, target
    failure_reason: str


class Viewer(Protocol):
    """The external user a request is served for (services/runtime/users.py: User)."""
    id: str

    def may_see(self, owner: str) -> bool: ...


class WalletPort(Protocol):
    async def describe(self, wallet: str) -> WalletFacts:
        """Owner, currency and balances of a wallet; NotFound when it does not exist."""

    async def describe_all(self, wallets: list[str]) -> list[WalletFacts]:
        """`describe` of several wallets in one call, in the order given; NotFound when any of
        them does not exist."""

    async def hold(self, source: str, amount: Money, reference: str, request_id: str) -> str:
        """Reserve `amount` on the source wallet; the hold's name. Idempotent by request_id."""


class ProviderPort(Protocol):
    async def pay(self, pay_in: bool, amount: Money, wallet: str, transaction: str, provider: str,
                  request_id: str) -> PaymentResult:
        """A pay-in to or pay-out from `wallet` through a provider. Idempotent by request_id."""

    async def require(self, provider: str) -> ProviderTerms | None:
        """What `provider` ("providers/x") takes; NotFound when the provider service does not know
        it; None when that service cannot say now (the saga finds out when it pays)."""


class ChainPort(Protocol):
    async def transfer(self, source_chain: str, target_chain: str, amount: Money, destination_address: str,
                       transaction: str, request_id: str) -> TransferResult:
        """A cross-chain transfer, compensated by the blockchain service when a step fails.
        Idempotent by request_id."""

    async def require(self, chain: str) -> None:
        """NotFound when the blockchain service does not know `chain` ("chains/x"); nothing when
        it does, or when it cannot say now (the saga finds out when it transfers)."""


class CompliancePort(Protocol):
    async def screen(self, tx: Transaction, request_id: str) -> Screened:
        """Screen the transaction (its initiator, amount, owners and BRIDGE address) before its money
        moves. A transaction is screened once: asking again returns the first decision."""

    async def decision(self, screening: str) -> Screened:
        """A screening's decision now (a held one, once reviewed, is approved or rejected)."""
