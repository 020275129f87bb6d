"""The rules file (compliance.yaml; DIBOAS_COMPLIANCE_FILE points to another one): each rule's
name, check, action and settings, made into the domain's rules (domain.py) in the file's order.
Every mistake is one ConfigError naming the file, the rule and the field, which stops the
service. No grpc, no SQL.
"""
from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Mapping

from services.config_files import REPO_ROOT, ConfigError, read_yaml_file
from services.domain import currencies
from services.domain.chains import address_problem
from services.domain.money import Money

from .domain import ACTIONS, DailyLimit, Rule, SanctionedAddresses, SanctionedOwners, TransactionLimit, Velocity, address_key

DEFAULT_COMPLIANCE_FILE = REPO_ROOT / "compliance.yaml"
ENV_KEY = "DIBOAS_COMPLIANCE_FILE"
COMMON = ("check", "action")
# Each check: its class and its settings besides `check` and `action` (all required).
CHECKS = {
    "transaction_limit": (TransactionLimit, ("limits",)),
    "daily_limit": (DailyLimit, ("limits",)),
    "sanctioned_owners": (SanctionedOwners, ("owners",)),
    "sanctioned_addresses": (SanctionedAddresses, ("addresses",)),
    "velocity": (Velocity, ("max_transactions",)),
}
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_AMOUNT = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
_HEX_PREFIX = re.compile(r"0[xX]")
_EVM = re.compile(r"0[xX][0-9a-fA-F]{40}")
MAX_OWNER_LENGTH = 128


def compliance_file(env: Mapping[str, str]) -> Path:
    return Path(env.get(ENV_KEY) or DEFAULT_COMPLIANCE_FILE)


def load_rules(path: Path) -> list[Rule]:
    """The rules of the file at `path`, in its order; the currencies are the installed catalogue's."""
    return parse_rules(read_yaml_file(path, "compliance file", ENV_KEY), path.name)


def parse_rules(raw, source: str) -> list[Rule]:
    """The rules from the file's content; ConfigError naming `source`, the rule and the field."""
    entries = raw.get("rules") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{source}: 'rules' must map each rule's name to its check, action and settings")
    unknown = sorted(set(raw) - {"rules"})
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: is not a section of the compliance file (known: rules)")
    return [_rule(f"{source}: rules.{name}", name, settings) for name, settings in entries.items()]


def _rule(where: str, name, settings) -> Rule:
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise ConfigError(f"{where}: a rule's name is 1 to 63 lower-case letters, digits and '-'")
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: must be a mapping with check, action and the check's settings")
    check = settings.get("check")
    if "check" not in settings:
        raise ConfigError(f"{where}.check: is required (one of {', '.join(CHECKS)})")
    if check not in CHECKS:
        raise ConfigError(f"{where}.check: must be one of {', '.join(CHECKS)}, got {check!r}")
    cls, own = CHECKS[check]
    known = COMMON + own
    for key in settings:
        if key not in known:
            raise ConfigError(f"{where}.{key}: is not a setting of a {check} rule (known: {', '.join(known)})")
    for key in known:
        if key not in settings:
            raise ConfigError(f"{where}.{key}: is required")
    action = settings["action"]
    if action not in ACTIONS:
        raise ConfigError(f"{where}.action: must be one of {', '.join(ACTIONS)}, got {action!r}")
    if own == ("limits",):
        return cls(name=name, action=action, limits=_limits(f"{where}.limits", settings["limits"]))
    if check == "sanctioned_owners":
        return cls(name=name, action=action, owners=frozenset(_owners(f"{where}.owners", settings["owners"])))
    if check == "sanctioned_addresses":
        return cls(name=name, action=action, addresses=frozenset(_addresses(f"{where}.addresses",
                                                                            settings["addresses"])))
    return cls(name=name, action=action, max_transactions=_count(f"{where}.max_transactions",
                                                                 settings["max_transactions"]))


def _limits(where: str, limits) -> dict[str, Money]:
    if not isinstance(limits, dict) or not limits:
        raise ConfigError(f"{where}: must map each currency code to its limit, like {{USD: \"10000.00\"}}")
    known = currencies.catalogue()
    parsed = {}
    for code, value in limits.items():
        if code not in known:
            raise ConfigError(f"{where}.{code}: is not a supported currency (supported: {', '.join(sorted(known))})")
        text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text is None or not _AMOUNT.fullmatch(text):
            raise ConfigError(f"{where}.{code}: must be a decimal amount, not negative, in quotes like "
                              f"\"10000.00\", got {value!r}")
        amount = Decimal(text)
        scale = known[code].scale
        if amount.as_tuple().exponent < -scale:
            raise ConfigError(f"{where}.{code}: {text} has more decimal places than {code} allows ({scale})")
        parsed[code] = Money(code, amount)
    return parsed


def _entries(where: str, entries, what: str) -> list[str]:
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: must be a list of {what} (may be empty: [])")
    for index, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ConfigError(f"{where}[{index}]: must be a string in quotes, got {entry!r} "
                              f"(YAML reads some unquoted values as numbers or booleans)")
    return entries


def _owners(where: str, owners) -> list[str]:
    for index, owner in enumerate(_entries(where, owners, "owner ids")):
        if not (0 < len(owner) <= MAX_OWNER_LENGTH and owner.isprintable() and not any(c.isspace() for c in owner)):
            raise ConfigError(f"{where}[{index}]: {owner!r} is not an owner id: 1 to {MAX_OWNER_LENGTH} printable "
                              "characters without spaces (compared exactly)")
    return owners


def _addresses(where: str, addresses) -> list[str]:
    keys = []
    for index, address in enumerate(_entries(where, addresses, "addresses")):
        problem = address_problem(address) if address else "is empty"
        if problem is None and _HEX_PREFIX.match(address) and not _EVM.fullmatch(address):
            problem = "starts with 0x but is not an EVM address (0x and 40 hex digits)"
        if problem:
            raise ConfigError(f"{where}[{index}]: {address!r} {problem}")
        keys.append(address_key(address))
    return keys


def _count(where: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: must be a whole number of transactions, 1 or more, got {value!r}")
    return value
