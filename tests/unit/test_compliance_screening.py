"""Compliance screening (services/compliance/domain.py): each rule at its boundary (equal to the
limit passes, one minor unit above fires), the windows' edges, the sanctions lists' matching,
precedence, and what a user is told compared with an operator."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from compliance_fakes import NOW, FakeHistory, Past, money, subject
from hypothesis import given
from hypothesis import strategies as st

from services.compliance.domain import (
    APPROVED,
    HELD,
    HELD_FOR_REVIEW,
    REJECTED,
    DailyLimit,
    SanctionedAddresses,
    SanctionedOwners,
    TransactionLimit,
    Velocity,
    address_key,
    screen,
)
from services.compliance.rules import DEFAULT_COMPLIANCE_FILE, load_rules
from services.domain import currencies
from services.domain.errors import InvalidArgument
from services.domain.money import Money

MICRO = dt.timedelta(microseconds=1)
EVM = "0x000000000000000000000000000000000000bAd0"


def minor_unit(currency: str) -> Decimal:
    return Decimal(1).scaleb(-currencies.currency(currency).scale)


def decided(rules, s, history=None):
    return screen(rules, s, history or FakeHistory())


# -- per transaction ---------------------------------------------------------------------------

@pytest.mark.parametrize("code", sorted(currencies.catalogue()))
def test_the_transaction_limit_passes_at_the_limit_and_fires_one_minor_unit_above(code):
    limit = Money(code, Decimal("10"))
    rule = TransactionLimit(name="large", action="hold", limits={code: limit})
    assert decided([rule], subject(limit.text, code)).outcome == APPROVED
    above = decided([rule], subject(str(limit.amount + minor_unit(code)), code))
    assert (above.outcome, above.rule) == (HELD, "large")


@given(st.integers(min_value=1, max_value=10**9))
def test_the_transaction_limit_fires_exactly_above_it(cents):
    rule = TransactionLimit(name="large", action="reject", limits={"USD": money("10000.00")})
    amount = Money("USD", Decimal(cents).scaleb(-2))
    assert (decided([rule], subject(amount.text)).outcome == REJECTED) == (amount.amount > Decimal("10000.00"))


def test_a_currency_the_limit_does_not_list_is_not_limited_by_it():
    rule = TransactionLimit(name="large", action="hold", limits={"USD": money("1.00")})
    assert decided([rule], subject("1000000.00", "EUR")).outcome == APPROVED


# -- per user and rolling day -----------------------------------------------------------------

def daily(limit: str = "1000.00", action: str = "hold") -> DailyLimit:
    return DailyLimit(name="daily", action=action, limits={"USD": money(limit)})


def test_the_daily_limit_passes_at_the_limit_and_fires_one_cent_above():
    history = FakeHistory([Past("alice", NOW - dt.timedelta(hours=1), money("900.00"))])
    assert decided([daily()], subject("100.00"), history).outcome == APPROVED
    over = decided([daily()], subject("100.01"), history)
    assert (over.outcome, over.rule) == (HELD, "daily")
    assert over.explanation == ("held by daily (daily_limit): alice would reach 1000.01 USD in 24 hours "
                                "(900.00 USD before this 100.01 USD), more than the limit of 1000.00 USD")


def test_the_rolling_day_is_the_24_hours_before_exclusive_of_its_first_instant():
    edge = FakeHistory([Past("alice", NOW - dt.timedelta(hours=24), money("900.00"))])
    inside = FakeHistory([Past("alice", NOW - dt.timedelta(hours=24) + MICRO, money("900.00"))])
    assert decided([daily()], subject("100.01"), edge).outcome == APPROVED
    assert decided([daily()], subject("100.01"), inside).outcome == HELD


def test_the_daily_total_leaves_out_rejected_screenings_other_users_and_other_currencies():
    history = FakeHistory([
        Past("alice", NOW - dt.timedelta(hours=1), money("900.00"), outcome=REJECTED),
        Past("bob", NOW - dt.timedelta(hours=1), money("900.00")),
        Past("alice", NOW - dt.timedelta(hours=1), money("900.00", "EUR")),
        Past("alice", NOW - dt.timedelta(hours=2), money("500.00"), outcome=HELD),   # held money counts
    ])
    assert decided([daily()], subject("500.00"), history).outcome == APPROVED
    assert decided([daily()], subject("500.01"), history).outcome == HELD


@given(st.lists(st.integers(min_value=1, max_value=50_000), max_size=8), st.integers(min_value=1, max_value=50_000))
def test_the_daily_limit_fires_exactly_when_the_sum_passes_it(earlier_cents, cents):
    history = FakeHistory([Past("alice", NOW - dt.timedelta(minutes=i + 1), Money("USD", Decimal(c).scaleb(-2)))
                           for i, c in enumerate(earlier_cents)])
    fired = decided([daily("1000.00")], subject(f"{Decimal(cents).scaleb(-2)}"), history).outcome == HELD
    assert fired == (sum(earlier_cents) + cents > 100_000)


# -- velocity ----------------------------------------------------------------------------------

def velocity(at_most: int = 3, action: str = "hold") -> Velocity:
    return Velocity(name="rapid", action=action, max_transactions=at_most)


def earlier(count: int, at: dt.datetime = NOW - dt.timedelta(seconds=1), user: str = "alice", **kw) -> FakeHistory:
    return FakeHistory([Past(user, at, money("1.00"), **kw) for _ in range(count)])


def test_velocity_passes_the_nth_transaction_in_60_seconds_and_fires_on_the_next():
    assert decided([velocity(3)], subject(), earlier(2)).outcome == APPROVED
    fired = decided([velocity(3)], subject(), earlier(3))
    assert (fired.outcome, fired.rule) == (HELD, "rapid")
    assert fired.explanation == "held by rapid (velocity): alice's transaction 4 in 60 seconds, more than 3"


def test_the_velocity_window_is_the_60_seconds_before_exclusive_of_its_first_instant():
    assert decided([velocity(1)], subject(), earlier(1, NOW - dt.timedelta(seconds=60))).outcome == APPROVED
    assert decided([velocity(1)], subject(), earlier(1, NOW - dt.timedelta(seconds=60) + MICRO)).outcome == HELD
    assert decided([velocity(1)], subject(), earlier(1, NOW)).outcome == HELD   # the same instant counts


def test_velocity_counts_rejected_attempts_and_only_the_users_own():
    assert decided([velocity(1)], subject(), earlier(1, outcome=REJECTED)).outcome == HELD
    assert decided([velocity(1)], subject(user="bob"), earlier(5)).outcome == APPROVED


# -- sanctions ---------------------------------------------------------------------------------

OWNERS = SanctionedOwners(name="owners", action="reject", owners=frozenset({"mallory"}))


@pytest.mark.parametrize("parties,who", [
    ({"user": "mallory"}, "user 'mallory'"),
    ({"source_owner": "mallory", "type": "SEND"}, "source owner 'mallory'"),
    ({"destination_owner": "mallory", "type": "SEND"}, "destination owner 'mallory'"),
])
def test_a_listed_owner_on_any_side_is_rejected(parties, who):
    d = decided([OWNERS], subject(**parties))
    assert (d.outcome, d.rule, d.reason) == (REJECTED, "owners", "refused by compliance screening (sanctions)")
    assert d.explanation == f"rejected by owners (sanctioned_owners): {who} on the sanctions list"


@pytest.mark.parametrize("owner", ["Mallory", "MALLORY", "mallory-2", "mallor"])
def test_owners_are_compared_exactly(owner):
    assert decided([OWNERS], subject(user=owner, destination_owner=owner)).outcome == APPROVED


ADDRESSES = SanctionedAddresses(name="addresses", action="reject",
                                addresses=frozenset({address_key(EVM), "So1anaBase58Addr"}))


@pytest.mark.parametrize("address", [EVM, EVM.lower(), EVM.upper().replace("0X", "0x"), "0X" + EVM[2:]])
def test_evm_addresses_match_in_any_case(address):
    d = decided([ADDRESSES], subject(type="BRIDGE", destination_address=address))
    assert (d.outcome, d.rule) == (REJECTED, "addresses")
    assert d.explanation == f"rejected by addresses (sanctioned_addresses): destination address {address} on the sanctions list"


@pytest.mark.parametrize("address,outcome", [("So1anaBase58Addr", REJECTED), ("so1anabase58addr", APPROVED),
                                             ("SO1ANABASE58ADDR", APPROVED), (EVM + "0", APPROVED)])
def test_other_addresses_match_exactly(address, outcome):
    assert decided([ADDRESSES], subject(type="BRIDGE", destination_address=address)).outcome == outcome


# -- precedence and what each side is told ------------------------------------------------------

HOLD_BIG = TransactionLimit(name="big", action="hold", limits={"USD": money("10.00")})
HOLD_FAST = velocity(1)
REJECT_BIG = TransactionLimit(name="huge", action="reject", limits={"USD": money("10.00")})


def test_reject_beats_hold_whatever_the_order_and_the_explanation_names_every_rule():
    d = decided([HOLD_BIG, HOLD_FAST, OWNERS], subject("10.01", user="mallory"), earlier(1, user="mallory"))
    assert (d.outcome, d.rule) == (REJECTED, "owners")
    assert [f.rule for f in d.findings] == ["owners", "big", "rapid"]
    assert d.explanation.startswith("rejected by owners (sanctioned_owners): user 'mallory' on the sanctions list; "
                                    "held by big (transaction_limit): 10.01 USD is more than the limit of 10.00 USD "
                                    "per transaction; held by rapid (velocity): ")


def test_among_rules_of_one_action_the_first_listed_decides():
    s = subject("10.01", user="mallory")
    assert decided([HOLD_FAST, HOLD_BIG], s, earlier(1, user="mallory")).rule == "rapid"
    assert decided([HOLD_BIG, HOLD_FAST], s, earlier(1, user="mallory")).rule == "big"
    assert decided([REJECT_BIG, OWNERS], s).rule == "huge"
    assert decided([OWNERS, REJECT_BIG], s).rule == "owners"


def test_the_user_is_told_the_kind_of_rule_never_its_name_limit_or_list():
    history = earlier(1)
    for rule, reason in [(HOLD_BIG, HELD_FOR_REVIEW), (REJECT_BIG, "refused by compliance screening (amount limits)"),
                         (velocity(1, "reject"), "refused by compliance screening (too many transactions)"),
                         (daily("1.00", "reject"), "refused by compliance screening (amount limits)"),
                         (ADDRESSES, "refused by compliance screening (sanctions)")]:
        d = decided([rule], subject("10.01", type="BRIDGE", destination_address=EVM), history)
        assert d.reason == reason
        assert rule.name not in d.reason and "10" not in d.reason


def test_nothing_fired_is_approved_with_no_rule_and_nothing_for_the_user():
    d = decided([HOLD_BIG, OWNERS, ADDRESSES, velocity(5), daily()], subject("10.00"))
    assert (d.outcome, d.rule, d.reason, d.findings) == (APPROVED, "", "", ())
    assert d.explanation == "no rule fired on 10.00 USD (DEPOSIT)"


# -- the subject -------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,field", [
    ({"type": "TRANSFER"}, "type"), ({"user": ""}, "user"), ({"at": NOW.replace(tzinfo=None)}, "at"),
    ({"amount": "0.00"}, "amount"), ({"type": "BRIDGE"}, "destination_address"),
])
def test_a_subject_that_cannot_be_screened_is_refused_naming_the_field(changes, field):
    with pytest.raises(InvalidArgument) as caught:
        subject(**changes)
    assert caught.value.violations[0].field == field


# -- the shipped rules -------------------------------------------------------------------------

SHIPPED = load_rules(DEFAULT_COMPLIANCE_FILE)


def test_the_demo_user_is_approved_for_every_step_of_the_demo():
    history = FakeHistory()
    steps = [("DEPOSIT", "100.00", {}), ("SEND", "25.00", {"source_owner": "alice", "destination_owner": "bob"}),
             ("BRIDGE", "10.00", {"source_owner": "alice",
                                  "destination_address": "0x000000000000000000000000000000000000d1b0"}),
             ("WITHDRAW", "20.00", {"source_owner": "alice"})]
    for i, (kind, amount, parties) in enumerate(steps):
        s = subject(amount, type=kind, at=NOW + dt.timedelta(seconds=i), **parties)
        assert screen(SHIPPED, s, history).outcome == APPROVED, kind
        history.screenings.append(Past("alice", s.at, s.amount))


@pytest.mark.parametrize("s,history,expected", [
    (subject("10000.00"), FakeHistory(), (APPROVED, "")),
    (subject("10000.01"), FakeHistory(), (HELD, "large-transaction")),
    (subject("10000.00"), FakeHistory([Past("alice", NOW - dt.timedelta(hours=h), money("10000.00")) for h in (1, 2)]),
     (HELD, "daily-volume")),
    (subject(user="sanctioned-demo-user"), FakeHistory(), (REJECTED, "sanctioned-owners")),
    (subject(type="BRIDGE", destination_address="0x000000000000000000000000000000000000BAD0"), FakeHistory(),
     (REJECTED, "sanctioned-addresses")),
    (subject("1.00"), earlier(10), (HELD, "rapid-fire")),
    (subject("1.00"), earlier(30), (REJECTED, "burst")),
])
def test_each_shipped_rule_fires_as_the_file_says(s, history, expected):
    d = screen(SHIPPED, s, history)
    assert (d.outcome, d.rule) == expected
