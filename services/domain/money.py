"""Exact money: a currency with a fixed scale and a decimal amount. Never a float.

Amounts travel as decimal strings ("12.50") and live as `decimal.Decimal`; an amount with
more decimal places than its currency allows is an error, not something to round. Each
currency's scale and limits come from the catalogue (currencies.py); the checks of the limits
are here, for every service that takes money in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

from .currencies import currency as currency_of
from .errors import FailedPrecondition, FieldViolation, InvalidArgument

# Up to 20 integer digits and 18 decimals: NUMERIC(38, 18) holds every amount.
# Matched whole (fullmatch: "$" would also match before a trailing newline).
# The pattern takes any number of digits: they are counted after, so that the error says which limit.
INTEGER_DIGITS, DECIMALS = 20, 18
_AMOUNT = re.compile(r"-?(0|[1-9][0-9]*)(?:\.([0-9]+))?")
# Every operation on amounts runs in this context: wide enough for any sum of them, and any
# rounding that changes a value raises instead of happening silently (Python's default keeps 28 digits).
EXACT = Context(prec=60, traps=[InvalidOperation, Inexact, Overflow])


def scale_of(currency: str, field: str = "currency_code") -> int:
    return currency_of(currency, field).scale


def _quantize(value: Decimal, scale: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-scale), context=EXACT)


def _too_long(amount: str, what: str, count: int, limit: int) -> str:
    shown = repr(amount) if len(amount) <= 40 else f"'{amount[:40]}...'"
    return f"{shown} has {count} {what}; an amount has at most {limit}"


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
        digits = _AMOUNT.fullmatch(amount) if isinstance(amount, str) else None
        if digits is None:
            raise InvalidArgument.field(field, f"{amount!r} is not a decimal amount like \"12.50\"")
        integer, decimals = digits.group(1), digits.group(2) or ""
        if len(integer) > INTEGER_DIGITS:
            raise InvalidArgument.field(field, _too_long(amount, "digits before the decimal point", len(integer),
                                                         INTEGER_DIGITS))
        if len(decimals) > DECIMALS:
            raise InvalidArgument.field(field, _too_long(amount, "decimal places", len(decimals), DECIMALS))
        if len(decimals) > scale:
            raise InvalidArgument.field(field, f"'{amount}' has {len(decimals)} decimal places; {currency} allows {scale}")
        value = Decimal(amount)
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


def require_transaction_limit(amount: Money, field: str = "amount") -> Money:
    """INVALID_ARGUMENT AMOUNT_OVER_LIMIT when one operation would move more than the currency's
    max_transaction."""
    limit = Money(amount.currency, currency_of(amount.currency).max_transaction)
    if limit < amount:
        description = f"{amount} is more than one transaction may move (max_transaction: {limit})"
        raise InvalidArgument(f"{field}: {description}", reason="AMOUNT_OVER_LIMIT",
                              violations=[FieldViolation(field, description)],
                              metadata={"limit": "max_transaction", "max_transaction": limit.text,
                                        "amount": amount.text, "currency": amount.currency})
    return amount


def require_balance_room(wallet: str, balance: Money, incoming: Money, amount: Money, disclose: bool = True) -> None:
    """FAILED_PRECONDITION BALANCE_LIMIT_EXCEEDED when `amount` more, on top of the wallet's
    balance (available + held) and what is already on its way to it, would pass the currency's
    max_balance. `disclose`: the message may say the balance (the caller may see the wallet)."""
    limit = Money(amount.currency, currency_of(amount.currency).max_balance)
    after = balance + incoming + amount
    if limit < after:
        metadata = {"wallet": wallet, "limit": "max_balance", "max_balance": limit.text, "amount": amount.text,
                    "currency": amount.currency}
        why = f"it would pass the maximum balance of {limit} (max_balance)"
        if disclose:
            why += f": balance {balance}, {incoming} already on its way, {after} after"
            metadata.update(balance=balance.text, incoming=incoming.text)
        raise FailedPrecondition(f"{wallet} cannot receive {amount}: {why}", reason="BALANCE_LIMIT_EXCEEDED",
                                 metadata=metadata)
