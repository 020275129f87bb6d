"""The wallet domain: wallets, holds and a double-entry ledger. No grpc, no SQL.

Every change of money is a journal whose lines sum to zero. Accounts:
  wallet:<id>:available   what the owner can spend
  wallet:<id>:held        reserved by active holds (money in flight)
  external:<currency>     the world outside the platform (deposits come from it, withdrawals go to it)
A wallet's balances are the sums of its two accounts; they may never go below zero. New money
asked for directly (a credit) may not take the wallet past its currency's maximum balance;
settling what was accepted earlier (a deposit's credit, a capture) is never refused for it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from services.domain.errors import FailedPrecondition
from services.domain.money import EXACT, Money, require_balance_room

AVAILABLE, HELD = "available", "held"
ACTIVE, CAPTURED, RELEASED = "ACTIVE", "CAPTURED", "RELEASED"
CREDIT, DEBIT, HOLD, HOLD_CAPTURE, HOLD_RELEASE = "CREDIT", "DEBIT", "HOLD", "HOLD_CAPTURE", "HOLD_RELEASE"


def wallet_account(wallet_id: str, bucket: str) -> str:
    return f"wallet:{wallet_id}:{bucket}"


def external_account(currency: str) -> str:
    return f"external:{currency}"


@dataclass
class Wallet:
    id: str
    owner_id: str
    currency: str
    available: Decimal
    held: Decimal
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def name(self) -> str:
        return f"wallets/{self.id}"

    def money(self, amount: Decimal) -> Money:
        return Money(self.currency, amount)

    @property
    def balance(self) -> Money:
        """Available and held: all the money the wallet has."""
        return self.money(EXACT.add(self.available, self.held))


@dataclass
class Hold:
    id: str
    wallet_id: str
    amount: Decimal
    state: str
    reference: str
    destination_wallet_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def name(self) -> str:
        return f"wallets/{self.wallet_id}/holds/{self.id}"

    def require_active(self) -> None:
        if self.state != ACTIVE:
            raise FailedPrecondition(f"hold {self.name} is {self.state.lower()}, not active", reason=f"HOLD_{self.state}")


@dataclass(frozen=True)
class Line:
    account: str
    amount: Decimal  # signed


@dataclass(frozen=True)
class WalletEffect:
    """What a journal did to one wallet, as its owner sees it in the ledger."""

    wallet_id: str
    type: str
    amount: Decimal
    available_after: Decimal
    held_after: Decimal


@dataclass
class Journal:
    type: str
    currency: str
    reference: str
    lines: list[Line] = field(default_factory=list)
    effects: list[WalletEffect] = field(default_factory=list)

    def post(self, wallets: dict[str, Wallet], now: dt.datetime, entry_types: dict[str, str]) -> None:
        """Apply the lines to the wallets they touch; refuse anything that would make a balance negative.
        `entry_types` names the ledger entry type each touched wallet gets (its owner's view)."""
        if EXACT.add(sum((line.amount for line in self.lines), Decimal(0)), Decimal(0)) != 0:
            raise ValueError(f"journal {self.type} does not balance: {self.lines}")
        for line in self.lines:
            kind, _, rest = line.account.partition(":")
            if kind != "wallet":
                continue
            wallet_id, _, bucket = rest.partition(":")
            wallet = wallets[wallet_id]
            if wallet.currency != self.currency:
                raise ValueError(f"journal in {self.currency} touches {wallet.currency} wallet {wallet_id}")
            new = EXACT.add(getattr(wallet, bucket), line.amount)
            if new < 0:
                raise FailedPrecondition(
                    f"insufficient funds in {wallet.name}: {bucket} balance is {wallet.money(getattr(wallet, bucket))},"
                    f" {wallet.money(-line.amount)} needed", reason="INSUFFICIENT_FUNDS",
                    metadata={"wallet": wallet.name, bucket: f"{getattr(wallet, bucket):f}",
                              "requested": f"{-line.amount:f}"})
            setattr(wallet, bucket, new)
            wallet.updated_at = now
        for wallet_id, entry_type in entry_types.items():
            wallet = wallets[wallet_id]
            amount = self._amount_for(wallet_id)
            self.effects.append(WalletEffect(wallet_id, entry_type, amount, wallet.available, wallet.held))

    def _amount_for(self, wallet_id: str) -> Decimal:
        """The size of the operation on this wallet (positive; the entry type tells the direction)."""
        touched = [abs(line.amount) for line in self.lines if line.account.startswith(f"wallet:{wallet_id}:")]
        return max(touched) if touched else Decimal(0)


def credit(wallet: Wallet, amount: Money, reference: str) -> Journal:
    return Journal(CREDIT, wallet.currency, reference, [
        Line(external_account(wallet.currency), -amount.amount),
        Line(wallet_account(wallet.id, AVAILABLE), amount.amount),
    ])


def credit_within_limit(wallet: Wallet, amount: Money, reference: str) -> Journal:
    """A credit asked for now: refused (BALANCE_LIMIT_EXCEEDED) when it would take the wallet
    past its currency's maximum balance."""
    require_balance_room(wallet.name, wallet.balance, Money.zero(wallet.currency), amount)
    return credit(wallet, amount, reference)


def debit(wallet: Wallet, amount: Money, reference: str) -> Journal:
    return Journal(DEBIT, wallet.currency, reference, [
        Line(wallet_account(wallet.id, AVAILABLE), -amount.amount),
        Line(external_account(wallet.currency), amount.amount),
    ])


def reserve(wallet: Wallet, amount: Money, reference: str) -> Journal:
    return Journal(HOLD, wallet.currency, reference, [
        Line(wallet_account(wallet.id, AVAILABLE), -amount.amount),
        Line(wallet_account(wallet.id, HELD), amount.amount),
    ])


def capture(wallet: Wallet, hold: Hold, destination: Wallet | None) -> Journal:
    """The held money leaves the wallet: to another wallet (an internal transfer, in the same
    journal) or out of the platform."""
    to = wallet_account(destination.id, AVAILABLE) if destination else external_account(wallet.currency)
    return Journal(HOLD_CAPTURE, wallet.currency, hold.reference, [
        Line(wallet_account(wallet.id, HELD), -hold.amount),
        Line(to, hold.amount),
    ])


def release(wallet: Wallet, hold: Hold) -> Journal:
    return Journal(HOLD_RELEASE, wallet.currency, hold.reference, [
        Line(wallet_account(wallet.id, HELD), -hold.amount),
        Line(wallet_account(wallet.id, AVAILABLE), hold.amount),
    ])
