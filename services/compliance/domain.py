"""Compliance screening: what a transaction is screened on (Subject), what the caller tells of
the user's recent past (History), the rules (one class per check) and the decision. Pure
Python: no grpc, protobuf or SQL; the rules come from compliance.yaml (rules.py).

Every rule is checked; each one that fires is a Finding. The decision follows the strongest
action among them: reject beats hold, hold beats approve. Among findings of the same action the
rule listed first in the file decides (its name is the decision's `rule`); the operator's
explanation names every rule that fired, the deciding one first.

Windows end at the subject's time `at`: the rolling day is the 24 hours before it, the velocity
window the 60 seconds before it. A screening made exactly 24 h (60 s) before `at` is out of the
window; one made a microsecond later is in.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

from services.domain.errors import InvalidArgument
from services.domain.money import Money

SEND, DEPOSIT, WITHDRAW, BRIDGE = "SEND", "DEPOSIT", "WITHDRAW", "BRIDGE"
TYPES = (SEND, DEPOSIT, WITHDRAW, BRIDGE)
APPROVED, REJECTED, HELD = "APPROVED", "REJECTED", "HELD"
REJECT, HOLD = "reject", "hold"
ACTIONS = (REJECT, HOLD)
ROLLING_DAY = dt.timedelta(hours=24)
VELOCITY_WINDOW = dt.timedelta(seconds=60)

# What a user is told: enough to know it was compliance and what kind of rule, nothing of the
# rules' names, limits or lists.
HELD_FOR_REVIEW = "held for a compliance review"
_EVM_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}")


def address_key(address: str) -> str:
    """The form an address is compared in: an EVM address (0x and 40 hex digits) in lower case,
    since its case is only a checksum (EIP-55); any other address as it is written, since case
    matters in base58 (Solana, Bitcoin legacy)."""
    return address.lower() if _EVM_ADDRESS.fullmatch(address) else address


@dataclass(frozen=True)
class Subject:
    """A transaction about to move money, as screening sees it. `user` initiates it; the
    owners of its source and destination wallets are given where the caller knows them ("" for
    a provider's or a chain's side); `destination_address` is a BRIDGE's receiving address."""
    transaction: str                # "transactions/{id}"
    type: str                       # SEND, DEPOSIT, WITHDRAW or BRIDGE
    user: str
    amount: Money
    at: dt.datetime                 # when it is screened, timezone-aware
    source_owner: str = ""
    destination_owner: str = ""
    destination_address: str = ""

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise InvalidArgument.field("type", f"'{self.type}' is not one of {', '.join(TYPES)}")
        if not self.user:
            raise InvalidArgument.field("user", "is required: the user who initiates the transaction")
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise InvalidArgument.field("at", f"{self.at} has no time zone")
        self.amount.require_positive("amount")
        if self.type == BRIDGE and not self.destination_address:
            raise InvalidArgument.field("destination_address", "is required for a BRIDGE")

    @property
    def owners(self) -> tuple[tuple[str, str], ...]:
        """(role, owner) of every party known, the initiating user first."""
        parties = (("user", self.user), ("source owner", self.source_owner),
                   ("destination owner", self.destination_owner))
        return tuple((role, owner) for role, owner in parties if owner)


class History(Protocol):
    """The user's earlier screenings, as the caller's storage knows them (the screening being
    decided is not among them). `since` is exclusive: a screening at exactly `since` is not
    counted."""

    def total_since(self, user: str, currency: str, since: dt.datetime) -> Money:
        """The sum, in `currency`, of the user's screenings after `since` that were not rejected
        (approved, held, or held and then approved)."""

    def count_since(self, user: str, since: dt.datetime) -> int:
        """How many screenings of the user were made after `since`, whatever their decision
        (velocity counts attempts)."""


@dataclass(frozen=True)
class Finding:
    """One rule that fired: its name, its check, its action and why, for operators."""
    rule: str
    check: str
    action: str
    explanation: str


@dataclass(frozen=True)
class Rule:
    """A rule of the file: its name, its action (reject or hold); subclasses check."""
    name: str
    action: str
    check = ""
    category = ""              # what a refused user is told the rule is about

    def finding(self, subject: Subject, history: History) -> Finding | None:
        why = self.why(subject, history)
        return Finding(self.name, self.check, self.action, why) if why else None

    def why(self, subject: Subject, history: History) -> str | None:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class TransactionLimit(Rule):
    """Fires when one transaction moves more than the limit of its currency (equal passes);
    currencies without a limit are not limited by this rule."""
    limits: Mapping[str, Money]
    check = "transaction_limit"
    category = "amount limits"

    def why(self, subject: Subject, history: History) -> str | None:
        limit = self.limits.get(subject.amount.currency)
        if limit is not None and limit < subject.amount:
            return f"{subject.amount} is more than the limit of {limit} per transaction"
        return None


@dataclass(frozen=True, kw_only=True)
class DailyLimit(Rule):
    """Fires when the user's screenings not rejected in the 24 h before, plus this one, pass the
    limit of the currency (equal passes)."""
    limits: Mapping[str, Money]
    check = "daily_limit"
    category = "amount limits"

    def why(self, subject: Subject, history: History) -> str | None:
        limit = self.limits.get(subject.amount.currency)
        if limit is None:
            return None
        before = history.total_since(subject.user, subject.amount.currency, subject.at - ROLLING_DAY)
        after = before + subject.amount
        if limit < after:
            return (f"{subject.user} would reach {after} in 24 hours ({before} before this {subject.amount}), "
                    f"more than the limit of {limit}")
        return None


@dataclass(frozen=True, kw_only=True)
class SanctionedOwners(Rule):
    """Fires when the initiating user or a wallet's owner is on the list (compared exactly)."""
    owners: frozenset[str]
    check = "sanctioned_owners"
    category = "sanctions"

    def why(self, subject: Subject, history: History) -> str | None:
        listed = [f"{role} '{owner}'" for role, owner in subject.owners if owner in self.owners]
        return f"{' and '.join(listed)} on the sanctions list" if listed else None


@dataclass(frozen=True, kw_only=True)
class SanctionedAddresses(Rule):
    """Fires when the destination address is on the list (EVM addresses in any case, others
    exactly: address_key). The list holds the addresses' keys."""
    addresses: frozenset[str]
    check = "sanctioned_addresses"
    category = "sanctions"

    def why(self, subject: Subject, history: History) -> str | None:
        address = subject.destination_address
        if address and address_key(address) in self.addresses:
            return f"destination address {address} on the sanctions list"
        return None


@dataclass(frozen=True, kw_only=True)
class Velocity(Rule):
    """Fires when this screening is more than `max_transactions` of the user in the 60 s before
    (the max_transactions-th passes, the next fires)."""
    max_transactions: int
    check = "velocity"
    category = "too many transactions"

    def why(self, subject: Subject, history: History) -> str | None:
        earlier = history.count_since(subject.user, subject.at - VELOCITY_WINDOW)
        if earlier + 1 > self.max_transactions:
            return (f"{subject.user}'s transaction {earlier + 1} in 60 seconds, more than {self.max_transactions}")
        return None


@dataclass(frozen=True)
class Decision:
    """APPROVED, REJECTED or HELD; `rule` that decided ("" when approved); `explanation` for
    operators (every rule that fired); `reason` for the user, which says nothing of the rules'
    internals; `findings` every rule that fired, the deciding one first."""
    outcome: str
    rule: str
    explanation: str
    reason: str
    findings: tuple[Finding, ...] = ()


_RANK = {REJECT: 0, HOLD: 1}
_OUTCOME = {REJECT: REJECTED, HOLD: HELD}


def screen(rules: Sequence[Rule], subject: Subject, history: History) -> Decision:
    """The decision on `subject` under `rules` (in the file's order)."""
    fired = [(rule, finding) for rule in rules if (finding := rule.finding(subject, history))]
    if not fired:
        return Decision(APPROVED, "", f"no rule fired on {subject.amount} ({subject.type})", "")
    fired.sort(key=lambda pair: _RANK[pair[0].action])        # stable: file order within an action
    rule, first = fired[0]
    findings = tuple(finding for _, finding in fired)
    explanation = "; ".join(f"{_OUTCOME[f.action].lower()} by {f.rule} ({f.check}): {f.explanation}"
                            for f in findings)
    if first.action == REJECT:
        return Decision(REJECTED, rule.name, explanation, f"refused by compliance screening ({rule.category})",
                        findings)
    return Decision(HELD, rule.name, explanation, HELD_FOR_REVIEW, findings)
