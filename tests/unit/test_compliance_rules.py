"""The rules file (services/compliance/rules.py): the shipped compliance.yaml, where the file is
found, and every mistake as one ConfigError naming the file, the rule and the field."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from services.compliance.domain import DailyLimit, SanctionedAddresses, SanctionedOwners, TransactionLimit, Velocity
from services.compliance.rules import DEFAULT_COMPLIANCE_FILE, compliance_file, load_rules
from services.config_files import ConfigError
from services.domain import currencies
from services.domain.money import Money


def write(tmp_path: Path, text: str, name: str = "compliance.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_rules(write(tmp_path, text, "rules.yaml"))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_shipped_file_has_one_rule_of_each_check_in_its_order():
    rules = load_rules(DEFAULT_COMPLIANCE_FILE)
    assert [(type(r), r.name, r.action) for r in rules] == [
        (TransactionLimit, "large-transaction", "hold"), (DailyLimit, "daily-volume", "hold"),
        (SanctionedOwners, "sanctioned-owners", "reject"), (SanctionedAddresses, "sanctioned-addresses", "reject"),
        (Velocity, "rapid-fire", "hold"), (Velocity, "burst", "reject")]


def test_the_shipped_limits_cover_every_currency_of_the_catalogue():
    rules = load_rules(DEFAULT_COMPLIANCE_FILE)
    for rule in rules[:2]:
        assert sorted(rule.limits) == sorted(currencies.catalogue()), rule.name
    assert rules[0].limits["USD"].text == "10000.00" and rules[1].limits["USD"].text == "25000.00"


def test_the_file_is_the_repository_s_unless_the_environment_names_another(tmp_path):
    assert compliance_file({}) == DEFAULT_COMPLIANCE_FILE
    assert compliance_file({"DIBOAS_COMPLIANCE_FILE": ""}) == DEFAULT_COMPLIANCE_FILE
    assert compliance_file({"DIBOAS_COMPLIANCE_FILE": str(tmp_path / "x.yaml")}) == tmp_path / "x.yaml"


def test_a_file_with_other_rules_gives_those_with_their_settings(tmp_path):
    rules = load_rules(write(tmp_path, """
        rules:
          btc-big: {check: transaction_limit, action: reject, limits: {BTC: "0.00000001", USD: 0}}
          list: {check: sanctioned_addresses, action: hold,
                 addresses: ["0xABCDEF0123456789abcdef0123456789ABCDEF01", "So1anaBase58Addr"]}
          nobody: {check: sanctioned_owners, action: reject, owners: []}
    """))
    assert rules[0].limits == {"BTC": Money.parse("BTC", "0.00000001"), "USD": Money.zero("USD")}
    assert rules[1].addresses == {"0xabcdef0123456789abcdef0123456789abcdef01", "So1anaBase58Addr"}
    assert rules[2].owners == frozenset()


RULE = "r: {check: transaction_limit, action: hold, limits: {USD: \"1.00\"}}"


@pytest.mark.parametrize("text,message", [
    ("", "rules.yaml: 'rules' must map each rule's name to its check, action and settings"),
    ("rules: {}", "rules.yaml: 'rules' must map each rule's name to its check, action and settings"),
    ("rules: [a, b]", "rules.yaml: 'rules' must map each rule's name to its check, action and settings"),
    (f"rules: {{{RULE}}}\nlimits: {{}}", "rules.yaml: limits: is not a section of the compliance file (known: rules)"),
    ("rules: {Big_One: {check: velocity, action: hold, max_transactions: 1}}",
     "rules.yaml: rules.Big_One: a rule's name is 1 to 63 lower-case letters, digits and '-'"),
    ("rules: {r: hold}", "rules.yaml: rules.r: must be a mapping with check, action and the check's settings"),
    ("rules: {r: {action: hold}}", "rules.yaml: rules.r.check: is required (one of transaction_limit, daily_limit, "
                                   "sanctioned_owners, sanctioned_addresses, velocity)"),
    ("rules: {r: {check: amount, action: hold}}", "rules.yaml: rules.r.check: must be one of transaction_limit, "
                                                  "daily_limit, sanctioned_owners, sanctioned_addresses, velocity, got 'amount'"),
    ("rules: {r: {check: velocity, action: hold, max_transactions: 1, window: 60}}",
     "rules.yaml: rules.r.window: is not a setting of a velocity rule (known: check, action, max_transactions)"),
    ("rules: {r: {check: velocity, action: hold, limits: {USD: \"1\"}}}",
     "rules.yaml: rules.r.limits: is not a setting of a velocity rule (known: check, action, max_transactions)"),
    ("rules: {r: {check: velocity, max_transactions: 1}}", "rules.yaml: rules.r.action: is required"),
    ("rules: {r: {check: daily_limit, action: hold}}", "rules.yaml: rules.r.limits: is required"),
    ("rules: {r: {check: velocity, action: block, max_transactions: 1}}",
     "rules.yaml: rules.r.action: must be one of reject, hold, got 'block'"),
    ("rules: {r: {check: velocity, action: Hold, max_transactions: 1}}",
     "rules.yaml: rules.r.action: must be one of reject, hold, got 'Hold'"),
])
def test_a_bad_file_or_rule_is_one_line_naming_the_file_and_the_rule(tmp_path, text, message):
    assert refusal(tmp_path, text) == message


def limit_rule(limits: str) -> str:
    return f"rules: {{big: {{check: transaction_limit, action: hold, limits: {limits}}}}}"


@pytest.mark.parametrize("limits,message", [
    ("{}", "limits: must map each currency code to its limit, like {USD: \"10000.00\"}"),
    ("[USD]", "limits: must map each currency code to its limit, like {USD: \"10000.00\"}"),
    ("{XYZ: \"1\"}", "limits.XYZ: is not a supported currency (supported: BRL, BTC, ETH, EUR, GBP, SOL, USD, USDC, USDT)"),
    ("{usd: \"1\"}", "limits.usd: is not a supported currency (supported: BRL, BTC, ETH, EUR, GBP, SOL, USD, USDC, USDT)"),
    ("{USD: ten}", "limits.USD: must be a decimal amount, not negative, in quotes like \"10000.00\", got 'ten'"),
    ("{USD: \"-1.00\"}", "limits.USD: must be a decimal amount, not negative, in quotes like \"10000.00\", got '-1.00'"),
    ("{USD: -1}", "limits.USD: must be a decimal amount, not negative, in quotes like \"10000.00\", got -1"),
    ("{USD: 10000.5}", "limits.USD: must be a decimal amount, not negative, in quotes like \"10000.00\", got 10000.5"),
    ("{USD: \"1e3\"}", "limits.USD: must be a decimal amount, not negative, in quotes like \"10000.00\", got '1e3'"),
    ("{USD: \"NaN\"}", "limits.USD: must be a decimal amount, not negative, in quotes like \"10000.00\", got 'NaN'"),
    ("{USD: \" 1\"}", "limits.USD: must be a decimal amount, not negative, in quotes like \"10000.00\", got ' 1'"),
    ("{USD: true}", "limits.USD: must be a decimal amount, not negative, in quotes like \"10000.00\", got True"),
    ("{USD: \"10.001\"}", "limits.USD: 10.001 has more decimal places than USD allows (2)"),
    ("{BTC: \"0.000000001\"}", "limits.BTC: 0.000000001 has more decimal places than BTC allows (8)"),
    ("{USD: \"1\", USD: \"2\"}", "limits.USD: appears twice (lines 1 and 1)"),
])
def test_every_bad_limit_names_the_file_the_rule_and_the_currency(tmp_path, limits, message):
    assert refusal(tmp_path, limit_rule(limits)) == f"rules.yaml: rules.big.{message}"


@pytest.mark.parametrize("entries,message", [
    ("owners: mallory", "owners: must be a list of owner ids (may be empty: [])"),
    ("owners: [mallory, 123]", "owners[1]: must be a string in quotes, got 123 (YAML reads some unquoted values as "
                               "numbers or booleans)"),
    ("owners: [no]", "owners[0]: must be a string in quotes, got False (YAML reads some unquoted values as numbers "
                     "or booleans)"),
    ("owners: [\"mallory \"]", "owners[0]: 'mallory ' is not an owner id: 1 to 128 printable characters without "
                               "spaces (compared exactly)"),
    ("owners: [\"\"]", "owners[0]: '' is not an owner id: 1 to 128 printable characters without spaces "
                       "(compared exactly)"),
    (f"owners: [\"{'m' * 129}\"]", f"owners[0]: '{'m' * 129}' is not an owner id: 1 to 128 printable characters "
                                   "without spaces (compared exactly)"),
])
def test_every_bad_owner_names_the_file_the_rule_and_the_entry(tmp_path, entries, message):
    text = f"rules: {{list: {{check: sanctioned_owners, action: reject, {entries}}}}}"
    assert refusal(tmp_path, text) == f"rules.yaml: rules.list.{message}"


@pytest.mark.parametrize("entries,message", [
    ("addresses: {a: b}", "addresses: must be a list of addresses (may be empty: [])"),
    ("addresses: [0x000000000000000000000000000000000000bad0]",
     "addresses[0]: must be a string in quotes, got 47824 (YAML reads some unquoted values as numbers or booleans)"),
    ("addresses: [\"0x123\"]", "addresses[0]: '0x123' starts with 0x but is not an EVM address (0x and 40 hex digits)"),
    ("addresses: [\"0x000000000000000000000000000000000000bag0\"]",
     "addresses[0]: '0x000000000000000000000000000000000000bag0' starts with 0x but is not an EVM address "
     "(0x and 40 hex digits)"),
    ("addresses: [\"ok\", \"two words\"]",
     "addresses[1]: 'two words' must be at most 128 printable characters without spaces"),
    ("addresses: [\"\"]", "addresses[0]: '' is empty"),
])
def test_every_bad_address_names_the_file_the_rule_and_the_entry(tmp_path, entries, message):
    text = f"rules: {{list: {{check: sanctioned_addresses, action: reject, {entries}}}}}"
    assert refusal(tmp_path, text) == f"rules.yaml: rules.list.{message}"


@pytest.mark.parametrize("value", ["0", "-1", "\"5\"", "true", "2.5"])
def test_a_velocity_needs_a_whole_number_of_one_or_more(tmp_path, value):
    text = f"rules: {{fast: {{check: velocity, action: hold, max_transactions: {value}}}}}"
    shown = {"\"5\"": "'5'", "true": "True"}.get(value, value)
    assert refusal(tmp_path, text) == (f"rules.yaml: rules.fast.max_transactions: must be a whole number of "
                                       f"transactions, 1 or more, got {shown}")


FAST = """\
rules:
  fast:
    check: velocity
    action: hold
    max_transactions: 10
"""


@pytest.mark.parametrize("more,message", [
    ("  fast:\n    check: velocity\n    action: reject\n    max_transactions: 30\n",
     "rules.yaml: rules.fast: appears twice (lines 2 and 6)"),
    ("    action: reject\n", "rules.yaml: rules.fast.action: appears twice (lines 4 and 6)"),
])
def test_a_rule_or_a_setting_given_twice_is_refused_with_both_lines(tmp_path, more, message):
    # YAML itself would keep the last one silently.
    assert refusal(tmp_path, FAST + more) == message


def test_a_missing_or_unreadable_file_says_which_and_the_variable(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_rules(tmp_path / "nope.yaml")
    assert str(caught.value) == f"compliance file {tmp_path / 'nope.yaml'} does not exist (set DIBOAS_COMPLIANCE_FILE)"
    with pytest.raises(ConfigError, match=r"^compliance file .*bad\.yaml cannot be read: "):
        load_rules(write(tmp_path, "rules: {a: [", "bad.yaml"))
