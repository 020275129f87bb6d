"""Exact money: parsing, scales, arithmetic without rounding."""
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.config_files import ConfigError
from services.domain.currencies import DEFAULT_CURRENCIES_FILE, load_catalogue
from services.domain.errors import InvalidArgument
from services.domain.money import Money


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
    ("USD", "123456789012345678901", "'123456789012345678901' has 21 digits before the decimal point; "
                                     "an amount has at most 20"),
    ("USD", "-1" + "0" * 37, f"'-1{'0' * 37}' has 38 digits before the decimal point"),
    ("USD", "9" * 60, f"'{'9' * 40}...' has 60 digits before the decimal point"),
    ("ETH", "1.0000000000000000001", "'1.0000000000000000001' has 19 decimal places; an amount has at most 18"),
    ("USD", "1.", "is not a decimal amount"),
    ("USD", "1.00\n", "is not a decimal amount"),                  # "$" alone would match before the newline
    ("USD", "١٢", "is not a decimal amount"),                      # Decimal() takes other scripts' digits
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


# --- properties ------------------------------------------------------------------------------------

SCALES = {code: currency.scale for code, currency in load_catalogue(DEFAULT_CURRENCIES_FILE).items()}

_CURRENCIES = st.sampled_from(sorted(SCALES))


@st.composite
def _amounts(draw) -> Money:
    currency = draw(_CURRENCIES)
    units = draw(st.integers(-(10**20 - 1), 10**20 - 1))
    fraction = draw(st.integers(0, 10**SCALES[currency] - 1))
    sign = -1 if units < 0 else 1
    return Money(currency, Decimal(units) + sign * Decimal(fraction).scaleb(-SCALES[currency]))


@settings(max_examples=150)
@given(_amounts())
def test_the_wire_form_parses_back_to_the_same_money(money):
    assert Money.parse(money.currency, money.text) == money


@settings(max_examples=200)
@given(_CURRENCIES, st.one_of(st.text(max_size=30), st.from_regex(r"-?[0-9]{1,22}(\.[0-9]{0,20})?\s?", fullmatch=True)))
def test_any_text_is_refused_or_is_exactly_its_value(currency, text):
    """Never an exception other than InvalidArgument; what is accepted is plain ASCII decimal
    notation without leading zeros, and its value is kept exactly."""
    try:
        money = Money.parse(currency, text)
    except InvalidArgument as exc:
        assert exc.violations and exc.violations[0].field == "amount"
        return
    assert set(text) <= set("-0123456789.") and text == text.strip()
    assert text.lstrip("-")[:1] != "0" or text.lstrip("-") == "0" or text.lstrip("-").startswith("0.")
    assert money.amount == Decimal(text) and Money.parse(currency, money.text) == money


@settings(max_examples=100)
@given(_amounts(), st.sampled_from(["\n", " ", "\t", "+", "\x00", "e0", "_", "\u00a0", "٠"]), st.booleans())
def test_a_valid_amount_with_anything_around_it_is_refused(money, extra, before):
    with pytest.raises(InvalidArgument):
        Money.parse(money.currency, extra + money.text if before else money.text + extra)


def test_a_currency_given_twice_is_refused_naming_it_not_the_last_one_kept(tmp_path):
    twice = tmp_path / "currencies.yaml"
    twice.write_text(DEFAULT_CURRENCIES_FILE.read_text().replace(
        "  EUR:", '  USD:  {scale: 0,  max_transaction: "1", max_balance: "1"}\n  EUR:', 1))
    with pytest.raises(ConfigError, match=r"^currencies.yaml: currencies\.USD: appears twice \(lines 13 and 14\)$"):
        load_catalogue(twice)
