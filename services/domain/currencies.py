"""The catalogue of currencies (currencies.yaml; DIBOAS_CURRENCIES_FILE points to another file):
each currency's scale, the largest amount one operation may move, and the largest balance a
wallet may reach. Every mistake stops the service with one line naming the file, the currency
and the setting. No grpc, no SQL.

Amounts are stored as NUMERIC(38, 18): no balance can reach 10^20. The limits are checked when
money is asked to move (a transaction created, a credit), never when it settles, so settlement
cannot fail because of them; transactions accepted at the same time do not see each other, so
a balance can pass its maximum by what they carry. The catalogue is refused unless the maximum
balance plus IN_FLIGHT_MARGIN transactions of the largest amount stays below 10^20.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Mapping

from services.config_files import REPO_ROOT, ConfigError, read_yaml_file

from .errors import InvalidArgument

DEFAULT_CURRENCIES_FILE = REPO_ROOT / "currencies.yaml"
STORAGE_LIMIT = Decimal(10) ** 20        # NUMERIC(38, 18): 20 integer digits
MAX_SCALE = 18                           # NUMERIC(38, 18): 18 decimals
# Transactions towards one wallet that may be accepted without seeing each other (created at the
# same time, or completed and not settled yet), for which the catalogue must leave room above
# the maximum balance.
IN_FLIGHT_MARGIN = 10**6
SETTINGS = ("scale", "max_transaction", "max_balance")


@dataclass(frozen=True)
class Currency:
    code: str
    scale: int                  # decimal places (ISO 4217 minor units; tokens by their contracts)
    max_transaction: Decimal    # the most one transaction, credit, debit or hold may move
    max_balance: Decimal        # the most a wallet (available + held) may reach by new money


def _amount(where: str, key: str, value, scale: int) -> Decimal:
    try:
        amount = Decimal(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount <= 0:
        raise ConfigError(f"{where}.{key}: must be a positive decimal amount like \"1000000.00\", got {value!r}")
    if amount.as_tuple().exponent < -scale:
        raise ConfigError(f"{where}.{key}: {value} has more decimal places than the scale ({scale})")
    return amount


def parse_catalogue(raw, source: str) -> dict[str, Currency]:
    """The catalogue from the file's content; ConfigError naming `source`, the currency and the setting."""
    entries = raw.get("currencies") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{source}: 'currencies' must map each currency code to its scale, "
                          "max_transaction and max_balance")
    catalogue = {}
    for code, settings in entries.items():
        where = f"{source}: currencies.{code}"
        if not (isinstance(code, str) and code.isascii() and code.isupper() and code.isalpha() and len(code) <= 8):
            raise ConfigError(f"{where}: a currency code is 1 to 8 upper-case letters")
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}: must be a mapping with {', '.join(SETTINGS)}")
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: is not a setting of a currency (known: {', '.join(SETTINGS)})")
        missing = [key for key in SETTINGS if key not in settings]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}: is required")
        scale = settings["scale"]
        if not isinstance(scale, int) or isinstance(scale, bool) or not 0 <= scale <= MAX_SCALE:
            raise ConfigError(f"{where}.scale: must be a whole number from 0 to {MAX_SCALE}, got {scale!r}")
        max_transaction = _amount(where, "max_transaction", settings["max_transaction"], scale)
        max_balance = _amount(where, "max_balance", settings["max_balance"], scale)
        if max_transaction > max_balance:
            raise ConfigError(f"{where}.max_transaction: {max_transaction} is more than max_balance ({max_balance})")
        if max_balance + IN_FLIGHT_MARGIN * max_transaction >= STORAGE_LIMIT:
            raise ConfigError(
                f"{where}.max_balance: {max_balance} plus {IN_FLIGHT_MARGIN:,} transactions of max_transaction "
                f"({max_transaction}) could reach 10^20, the most an amount can be stored as; lower them")
        catalogue[code] = Currency(code, scale, max_transaction, max_balance)
    return catalogue


def currencies_file(env: Mapping[str, str]) -> Path:
    return Path(env.get("DIBOAS_CURRENCIES_FILE") or DEFAULT_CURRENCIES_FILE)


def load_catalogue(path: Path) -> dict[str, Currency]:
    return parse_catalogue(read_yaml_file(path, "currencies file", "DIBOAS_CURRENCIES_FILE"), path.name)


_installed: dict[str, Currency] | None = None


def install(catalogue: dict[str, Currency] | None) -> dict[str, Currency] | None:
    """Make `catalogue` the one every amount is checked against (None: the file's, read again
    when next needed); the one it replaces."""
    global _installed
    previous, _installed = _installed, catalogue
    return previous


def load(env: Mapping[str, str] | None = None) -> dict[str, Currency]:
    """Read the file (DIBOAS_CURRENCIES_FILE or currencies.yaml) and install its catalogue; a
    service does this when it starts, so a mistake stops it there."""
    catalogue = load_catalogue(currencies_file(os.environ if env is None else env))
    install(catalogue)
    return catalogue


def catalogue() -> dict[str, Currency]:
    """The installed catalogue (the file's, read on first use when none was installed)."""
    return _installed if _installed is not None else load()


def currency(code: str, field: str = "currency_code") -> Currency:
    """The currency `code`; INVALID_ARGUMENT naming `field` when it is not in the catalogue."""
    known = catalogue()
    try:
        return known[code]
    except KeyError:
        raise InvalidArgument.field(field, f"'{code}' is not a supported currency (supported: "
                                           f"{', '.join(sorted(known))})") from None
