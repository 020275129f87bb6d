"""Payment providers behind one interface. A real provider is one class: subclass
ProviderAdapter, implement `quote`, `execute` and `check`, and list it in providers.yaml
(see docs/providers.md). No grpc here: the provider service's transport wraps this.
"""
from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field
from decimal import ROUND_UP, Context, Decimal

from services.config_files import ConfigError
from services.domain.currencies import catalogue
from services.domain.money import Money, scale_of
from services.runtime.catalog import Configurable

PAY_IN, PAY_OUT = "PAY_IN", "PAY_OUT"
_ROUNDING = Context(prec=60, rounding=ROUND_UP)


def charge(amount: Decimal, currency: str) -> Decimal:
    """A fee or cost at the currency's scale, rounded up (a provider never charges a fraction less)."""
    return amount.quantize(Decimal(1).scaleb(-scale_of(currency)), context=_ROUNDING)


class ProviderError(Exception):
    """The provider failed this request (it may work again later)."""


class ProviderTimeout(ProviderError):
    """The provider did not answer in time."""


@dataclass(frozen=True)
class QuoteRequest:
    direction: str       # PAY_IN (the user pays in) or PAY_OUT (the user is paid out)
    amount: Money


@dataclass(frozen=True)
class Quote:
    provider: str
    fee: Money
    spread: Decimal               # share of the amount lost in conversion, e.g. 0.004
    total_cost: Money             # fee + spread cost: what using this provider costs the user
    receive_amount: Money         # what arrives at the other end
    estimated_latency: dt.timedelta
    expires_at: dt.datetime


@dataclass(frozen=True)
class Receipt:
    provider: str
    reference: str                # the provider's id of the payment
    fee: Money
    idempotency_key: str


@dataclass
class Limits:
    currencies: frozenset[str]
    directions: frozenset[str] = frozenset({PAY_IN, PAY_OUT})
    minimum: dict[str, Decimal] = field(default_factory=dict)
    maximum: dict[str, Decimal] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: dict) -> "Limits":
        """From a provider's settings: currencies (of the catalogue), directions (default both),
        minimum and maximum per payment, per currency (each one of the provider's currencies)."""
        currencies = settings.pop("currencies", None)
        if not isinstance(currencies, list) or not currencies:
            raise ConfigError("currencies: must list the currency codes the provider handles, e.g. [USD]")
        known = catalogue()
        unknown = sorted(str(c) for c in currencies if c not in known)
        if unknown:
            raise ConfigError(f"currencies: {unknown[0]} is not in the catalogue of currencies "
                              f"(known: {', '.join(sorted(known))})")
        directions = settings.pop("directions", [PAY_IN, PAY_OUT])
        if not isinstance(directions, list) or not set(directions) <= {PAY_IN, PAY_OUT} or not directions:
            raise ConfigError(f"directions: must list PAY_IN and/or PAY_OUT, got {directions}")
        limits = cls(frozenset(map(str, currencies)), frozenset(directions),
                     decimals(settings.pop("minimum", {}), "minimum"), decimals(settings.pop("maximum", {}), "maximum"))
        for key, amounts in (("minimum", limits.minimum), ("maximum", limits.maximum)):
            for currency, amount in amounts.items():
                if currency not in limits.currencies:
                    raise ConfigError(f"{key}.{currency}: is not one of the provider's currencies")
                if amount <= 0:
                    raise ConfigError(f"{key}.{currency}: must be greater than zero, got {amount}")
        for currency, low in limits.minimum.items():
            if currency in limits.maximum and low > limits.maximum[currency]:
                raise ConfigError(f"minimum.{currency}: {low} is more than the maximum ({limits.maximum[currency]})")
        return limits

    def refuses(self, request: QuoteRequest) -> str | None:
        """Why this provider cannot serve the request, or None."""
        currency, amount = request.amount.currency, request.amount.amount
        if currency not in self.currencies:
            return f"does not support {currency}"
        if request.direction not in self.directions:
            return f"does not support {request.direction}"
        if currency in self.minimum and amount < self.minimum[currency]:
            return f"minimum is {self.minimum[currency]} {currency}"
        if currency in self.maximum and amount > self.maximum[currency]:
            return f"maximum is {self.maximum[currency]} {currency}"
        return None


def decimals(values, key: str) -> dict[str, Decimal]:
    """{currency: exact amount} from settings, e.g. {USD: "10"}; ConfigError naming `key`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: must map currency codes to amounts, e.g. {{USD: \"10\"}}")
    try:
        amounts = {str(currency): Decimal(str(amount)) for currency, amount in values.items()}
    except ArithmeticError:
        amounts = None
    if amounts is None or not all(amount.is_finite() for amount in amounts.values()):
        raise ConfigError(f"{key}: {values} holds something that is not an exact decimal")
    return amounts


class ProviderAdapter(Configurable, abc.ABC):
    """One payment provider. Implementations must be safe to call concurrently, and `execute`
    must never charge twice for one idempotency key (pass it to the provider's API). Built from
    its providers.yaml entry by `from_settings` (by default: the constructor, keyword arguments)."""

    name: str
    display_name: str
    limits: Limits

    @abc.abstractmethod
    async def quote(self, request: QuoteRequest) -> Quote:
        """What the request would cost now; ProviderError when the provider cannot say."""

    @abc.abstractmethod
    async def execute(self, request: QuoteRequest, idempotency_key: str) -> Receipt:
        """Move the money; the same key again returns the first receipt and moves nothing."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Return when the provider is reachable and working; raise ProviderError otherwise."""
