"""Exact money: a currency with a fixed scale and a decimal amount. Never a float.

Amounts travel as decimal strings ("12.50") and live as `decimal.Decimal`; an amount with
more decimal places than its currency allows is an error, not something to round.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

from services.runtime.errors import FieldViolation, InvalidArgument

# Decimal places of each supported currency (ISO 4217 minor units; tokens by their contracts).
SCALES: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "BRL": 2,
    "BTC": 8, "ETH": 18, "SOL": 9, "USDC": 6, "USDT": 6,
}
# Up to 20 integer digits and 18 decimals: NUMERIC(38, 18) holds every amount.
# Matched whole (fullmatch: "$" would also match before a trailing newline).
_AMOUNT = re.compile(r"-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,18})?")
# Every operation on amounts runs in this context: wide enough for any sum of them, and any
# rounding that changes a value raises instead of happening silently (Python's default keeps 28 digits).
EXACT = Context(prec=60, traps=[InvalidOperation, Inexact, Overflow])


def scale_of(currency: str, field: str = "currency_code") -> int:
    try:
        return SCALES[currency]
    except KeyError:
        supported = ", ".join(sorted(SCALES))
        raise InvalidArgument.field(field, f"'{currency}' is not a supported currency (supported: {supported})") from None


def _quantize(value: Decimal, scale: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-scale), context=EXACT)


@dataclass(frozen=True, order=False)
class Money:
    currency: str
    amount: Decimal

    def __post_init__(self) -> None:
        # Always at the currency's scale ("12.50", never "12.5" or "12.500000000000000000" as
        # PostgreSQL's NUMERIC(38, 18) returns it); more places than the scale raise (EXACT traps).
        object.__setattr__(self, "amount", _quantize(self.amount, scale_of(self.currency)))

    @classmethod
    def parse(cls, currency: str, amount: str, field: str = "amount", currency_field: str = "currency_code") -> "Money":
        """Money from its wire form; InvalidArgument naming the field when anything is off."""
        scale = scale_of(currency, currency_field)
        if not isinstance(amount, str) or not _AMOUNT.fullmatch(amount):
            raise InvalidArgument.field(field, f"{amount!r} is not a decimal amount like \"12.50\"")
        value = Decimal(amount)
        places = -value.as_tuple().exponent if value.as_tuple().exponent < 0 else 0
        if places > scale:
            raise InvalidArgument.field(field, f"'{amount}' has {places} decimal places; {currency} allows {scale}")
        return cls(currency, _quantize(abs(value) if value == 0 else value, scale))

    @classmethod
    def zero(cls, currency: str) -> "Money":
        return cls(currency, _quantize(Decimal(0), scale_of(currency)))

    def require_positive(self, field: str = "amount") -> "Money":
        if self.amount <= 0:
            raise InvalidArgument(f"{field}: must be greater than zero, got {self}",
                                  violations=[FieldViolation(field, "must be greater than zero")])
        return self

    def _same(self, other: "Money") -> None:
        if other.currency != self.currency:
            raise InvalidArgument(f"currency mismatch: {self.currency} and {other.currency}",
                                  reason="CURRENCY_MISMATCH")

    def __add__(self, other: "Money") -> "Money":
        self._same(other)
        return Money(self.currency, EXACT.add(self.amount, other.amount))

    def __sub__(self, other: "Money") -> "Money":
        self._same(other)
        return Money(self.currency, EXACT.subtract(self.amount, other.amount))

    def __neg__(self) -> "Money":
        return Money(self.currency, EXACT.minus(self.amount))

    def __lt__(self, other: "Money") -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: "Money") -> bool:
        self._same(other)
        return self.amount <= other.amount

    @property
    def text(self) -> str:
        """The wire form: fixed-point, exactly the currency's scale ("12.50")."""
        return f"{self.amount:f}"

    def __str__(self) -> str:
        return f"{self.text} {self.currency}"
