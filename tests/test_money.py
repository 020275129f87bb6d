"""Exact money: parsing, scales, arithmetic without rounding."""
from decimal import Decimal

import pytest

from services.domain.currencies import DEFAULT_CURRENCIES_FILE, load_catalogue
from services.domain.money import Money
from services.runtime.errors import InvalidArgument


@pytest.mark.parametrize("currency,text,expected", [
    ("USD", "12.5", "12.50"), ("USD", "0", "0.00"), ("BTC", "0.00000001", "0.00000001"),
    ("ETH", "1.000000000000000001", "1.000000000000000001"), ("USDC", "3", "3.000000"),
    ("USD", "-0", "0.00"), ("ETH", "99999999999999999999.999999999999999999", "99999999999999999999.999999999999999999"),
])
def test_parse_keeps_the_exact_amount_at_the_currency_scale(currency, text, expected):
    assert Money.parse(currency, text).text == expected


@pytest.mark.parametrize("currency,text,message", [
    ("USD", "1.234", "'1.234' has 3 decimal places; USD allows 2"),
    ("BTC", "0.000000001", "has 9 decimal places; BTC allows 8"),
    ("USD", "1e5", "is not a decimal amount"),
    ("USD", "1,5", "is not a decimal amount"),
    ("USD", "01.5", "is not a decimal amount"),
    ("USD", " 1", "is not a decimal amount"),
    ("USD", "", "is not a decimal amount"),
    ("USD", "NaN", "is not a decimal amount"),
    ("USD", "123456789012345678901", "is not a decimal amount"),   # 21 integer digits
])
def test_bad_amounts_are_rejected_naming_the_field(currency, text, message):
    with pytest.raises(InvalidArgument) as caught:
        Money.parse(currency, text, field="transaction.amount.amount")
    assert message in caught.value.message
    assert caught.value.violations[0].field == "transaction.amount.amount"


def test_unknown_currency_names_the_currency_field():
    with pytest.raises(InvalidArgument) as caught:
        Money.parse("XYZ", "1", currency_field="amount.currency_code")
    assert caught.value.violations[0].field == "amount.currency_code"
    assert "'XYZ' is not a supported currency" in caught.value.message


def test_arithmetic_is_exact_even_past_28_digits():
    big = Money.parse("ETH", "12345678901234567890.123456789012345678")
    assert (big + big).amount == Decimal("24691357802469135780.246913578024691356")
    assert (big - big).amount == 0
    assert (-big).amount == Decimal("-12345678901234567890.123456789012345678")  # unary minus on a bare Decimal would round


def test_mixing_currencies_is_an_error():
    with pytest.raises(InvalidArgument, match="currency mismatch: USD and EUR"):
        Money.parse("USD", "1") + Money.parse("EUR", "1")


def test_positive_check():
    assert Money.parse("USD", "0.01").require_positive()
    for text in ("0", "-1"):
        with pytest.raises(InvalidArgument, match="must be greater than zero"):
            Money.parse("USD", text).require_positive()


def test_the_repository_catalogue_has_the_currencies_and_their_scales():
    scales = {code: c.scale for code, c in load_catalogue(DEFAULT_CURRENCIES_FILE).items()}
    assert scales == {"USD": 2, "EUR": 2, "GBP": 2, "BRL": 2, "BTC": 8, "ETH": 18, "SOL": 9, "USDC": 6, "USDT": 6}
