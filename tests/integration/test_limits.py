"""The limits of each currency (currencies.yaml) and of each provider (providers.yaml): money
that would pass one is refused when it is asked to move, before anything moves, so nothing
accepted can later fail to settle because of it. On PostgreSQL a balance can never reach 10^20
(NUMERIC(38, 18)); before these limits a deposit there was accepted, paid in, and never credited."""
from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from sqlalchemy import func, select, update

from diboas.provider.v1 import provider_pb2
from diboas.transaction.v1 import transaction_pb2
from diboas.wallet.v1 import wallet_pb2
from services.config_files import ConfigError
from services.domain import currencies
from services.domain.currencies import DEFAULT_CURRENCIES_FILE, IN_FLIGHT_MARGIN, STORAGE_LIMIT, load_catalogue
from services.domain.errors import FailedPrecondition
from services.domain.money import Money
from services.provider.adapters import PAY_IN, QuoteRequest
from services.provider.catalog import load_providers
from services.provider.registry import ProviderRegistry
from services.provider.simulator import default_providers
from services.runtime.db import Database
from services.runtime.status import error_info
from services.transaction.tables import messaging, transactions
from services.wallet.tables import holds, wallets

from conftest import catalogue_file, postgres_schema
from meshkit import ORDER, refused_start, start_mesh, usd

COMPLETED = transaction_pb2.TRANSACTION_STATE_COMPLETED
FAILED = transaction_pb2.TRANSACTION_STATE_FAILED
PROVIDERS = ("alpha-pay", "beta-ramp", "gamma-exchange")
SMALL = """
currencies:
  USD: {scale: 2, max_transaction: "1000.00", max_balance: "2000.00"}
  EUR: {scale: 2, max_transaction: "1000.00", max_balance: "2000.00"}
  GBP: {scale: 2, max_transaction: "1000.00", max_balance: "2000.00"}
  BRL: {scale: 2, max_transaction: "1000.00", max_balance: "2000.00"}
"""


# --- the catalogue ----------------------------------------------------------------------------------

def test_the_repository_catalogue_leaves_room_below_the_storage_limit():
    catalogue = load_catalogue(DEFAULT_CURRENCIES_FILE)
    assert catalogue["USD"].max_transaction == Decimal("1000000.00")
    for currency in catalogue.values():
        assert 0 < currency.max_transaction <= currency.max_balance
        assert currency.max_balance + IN_FLIGHT_MARGIN * currency.max_transaction < STORAGE_LIMIT


@pytest.mark.parametrize("entry,message", [
    ('USD: {scale: 2, max_transaction: "10.00"}', "currencies.yaml: currencies.USD.max_balance: is required"),
    ('USD: {scale: 2, max_transaction: "10.001", max_balance: "100"}',
     "currencies.USD.max_transaction: 10.001 has more decimal places than the scale (2)"),
    ('USD: {scale: 2, max_transaction: 10.5, max_balance: "100"}',
     "currencies.USD.max_transaction: must be a positive decimal amount"),
    ('USD: {scale: 2, max_transaction: "0", max_balance: "100"}',
     "currencies.USD.max_transaction: must be a positive decimal amount"),
    ('USD: {scale: 19, max_transaction: "1", max_balance: "100"}', "currencies.USD.scale: must be a whole number"),
    ('USD: {scale: 2, max_transaction: "200", max_balance: "100"}',
     "currencies.USD.max_transaction: 200 is more than max_balance (100)"),
    ('USD: {scale: 2, max_transaction: "1", max_balance: "100", colour: red}',
     "currencies.USD.colour: is not a setting of a currency"),
    ('usd: {scale: 2, max_transaction: "1", max_balance: "100"}', "currencies.usd: a currency code is"),
    # Within NUMERIC(38, 18) by itself, but a million transactions accepted together would pass 10^20.
    ('ETH: {scale: 18, max_transaction: "100000000000000", max_balance: "10000000000000000"}',
     "currencies.ETH.max_balance: 10000000000000000 plus 1,000,000 transactions of max_transaction"),
    ('USD: {scale: 2, max_transaction: "1", max_balance: "99999999999999999999"}', "could reach 10^20"),
])
def test_every_catalogue_mistake_names_the_file_the_currency_and_the_setting(tmp_path, entry, message):
    path = catalogue_file(tmp_path, "currencies.yaml", f"currencies:\n  {entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_catalogue(path)
    assert message in str(caught.value)


def test_a_missing_catalogue_says_which_variable_names_another(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist \\(set DIBOAS_CURRENCIES_FILE\\)"):
        load_catalogue(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("currencies: {}\n")
    with pytest.raises(ConfigError, match="empty.yaml: 'currencies' must map each currency code"):
        load_catalogue(tmp_path / "empty.yaml")


def test_a_service_with_a_bad_catalogue_stops_with_one_line(pki, tmp_path):
    path = catalogue_file(tmp_path, "currencies.yaml",
                          'currencies:\n  USD: {scale: 2, max_transaction: "1", max_balance: "99999999999999999999"}\n')
    stderr = refused_start(pki, tmp_path / "state", "wallet", DIBOAS_CURRENCIES_FILE=str(path))
    assert "wallet: configuration error: currencies.yaml: currencies.USD.max_balance:" in stderr
    assert "could reach 10^20" in stderr


@pytest.fixture
def small_limits(tmp_path, monkeypatch):
    """USD (and the providers' other currencies) at most 1000.00 a transaction and 2000.00 a balance."""
    path = catalogue_file(tmp_path, "small-currencies.yaml", SMALL)
    monkeypatch.setenv("DIBOAS_CURRENCIES_FILE", str(path))
    currencies.install(None)          # read again from the file now named
    yield
    currencies.install(None)


# --- the mesh, on both backends -----------------------------------------------------------------------

@pytest.fixture
def transaction_database(database_url, tmp_path):
    """The transaction service's database on the same backend as the wallet's (its own schema)."""
    if database_url.startswith("postgresql"):
        with postgres_schema() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path}/transaction-limits.db"


@pytest.fixture
async def mesh(database_url, transaction_database, topology, start_server, sanctions_only):
    mesh = await start_mesh(topology, start_server, ORDER, wallet=database_url, transaction=transaction_database)
    mesh.databases = {"wallet": database_url, "transaction": transaction_database}
    yield mesh
    await mesh.close()


def count(url: str, table) -> int:
    db = Database(url, None)
    try:
        with db.reading() as connection:
            return connection.execute(select(func.count()).select_from(table)).scalar_one()
    finally:
        db.close()


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def credit(mesh, wallet: str, amount: str, key: str):
    return await mesh.wallets.CreditWallet(wallet_pb2.CreditWalletRequest(
        wallet=wallet, amount=usd(amount), request_id=key), metadata=mesh.as_operator, timeout=10)


async def nothing_moved(mesh, balances: dict[str, tuple]) -> None:
    """No transaction, no event, no hold, no charge; the wallets as they were."""
    assert count(mesh.databases["transaction"], transactions) == 0
    assert count(mesh.databases["transaction"], messaging.outbox) == 0
    assert count(mesh.databases["wallet"], holds) == 0
    assert all(mesh.provider_books(p) == [] for p in PROVIDERS)
    for wallet, expected in balances.items():
        assert await mesh.balances(wallet) == expected


async def slow_providers(mesh, seconds: int) -> None:
    for p in PROVIDERS:
        await mesh.provider("SetProviderFaults", provider_pb2.SetProviderFaultsRequest(
            provider=f"providers/{p}", faults=provider_pb2.ProviderFaults(extra_latency={"seconds": seconds}),
            request_id=f"slow-{p}-{seconds}"))


async def test_a_balance_near_the_storage_limit_is_refused_more_money_at_creation(mesh):
    """The old failure: on PostgreSQL a wallet near 10^20 took a DEPOSIT (COMPLETED, paid in) that
    it could never credit, and a SEND to it left the sender's money held forever. The balance here
    is written as a wallet could have reached it before the limits existed."""
    alice, bob = await mesh.wallet("alice", "0"), await mesh.wallet("bob", "500.00")
    db = Database(mesh.databases["wallet"], None)
    with db.transaction() as connection:
        connection.execute(update(wallets).where(wallets.c.id == alice.removeprefix("wallets/"))
                           .values(available=Decimal("99999999999999999950.00")))
    db.close()
    deposit = await refused(mesh.create("DEPOSIT", "100.00", "d-near", destination_wallet=alice))
    send = await refused(mesh.send(bob, alice, "100.00", "s-near"))
    for error in (deposit, send):
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        info = error_info(error)
        assert info.reason == "BALANCE_LIMIT_EXCEEDED" and info.metadata["max_balance"] == "1000000000.00"
        assert "max_balance" in error.details()
    await nothing_moved(mesh, {alice: (Decimal("99999999999999999950.00"), 0), bob: (Decimal("500.00"), 0)})


async def test_an_amount_over_max_transaction_is_refused_for_every_type_before_anything_moves(mesh):
    alice, bob = await mesh.wallet("alice", "600000.00"), await mesh.wallet("bob", "0")
    await credit(mesh, alice, "600000.00", "more")           # 1,200,000.00: enough for the amount
    for kind, fields in (("SEND", dict(source_wallet=alice, destination_wallet=bob)),
                         ("DEPOSIT", dict(destination_wallet=bob)),
                         ("WITHDRAW", dict(source_wallet=alice)),
                         ("BRIDGE", dict(source_wallet=alice, source_chain="chains/ethereum",
                                         target_chain="chains/polygon", destination_address="0xabc"))):
        error = await refused(mesh.create(kind, "1000000.01", f"big-{kind}", **fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (kind, error.details())
        assert error.details().startswith("transaction.amount.amount: 1000000.01 USD is more than one transaction")
        info = error_info(error)
        assert info.reason == "AMOUNT_OVER_LIMIT" and info.metadata["max_transaction"] == "1000000.00"
    await nothing_moved(mesh, {alice: (Decimal("1200000.00"), 0), bob: (0, 0)})


async def test_the_wallets_own_rpcs_refuse_an_amount_over_max_transaction(mesh):
    alice = await mesh.wallet("alice", "600000.00")
    too_much = usd("1000000.01")
    for call in (mesh.wallets.CreditWallet(wallet_pb2.CreditWalletRequest(wallet=alice, amount=too_much,
                                                                          request_id="c"), metadata=mesh.as_operator),
                 mesh.wallets.DebitWallet(wallet_pb2.DebitWalletRequest(wallet=alice, amount=too_much,
                                                                        request_id="d"), metadata=mesh.as_operator),
                 mesh.wallets.CreateHold(wallet_pb2.CreateHoldRequest(
                     parent=alice, hold=wallet_pb2.Hold(amount=too_much, reference="r"), request_id="h"),
                     metadata=mesh.as_operator)):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error_info(error).reason == "AMOUNT_OVER_LIMIT"
    assert await mesh.balances(alice) == (Decimal("600000.00"), 0)


async def test_credit_wallet_refuses_a_credit_past_the_maximum_balance(mesh, small_limits):
    alice = await mesh.wallet("alice", "1000.00")
    await credit(mesh, alice, "900.00", "c1")
    error = await refused(credit(mesh, alice, "100.01", "c2"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "BALANCE_LIMIT_EXCEEDED" and "2000.00 USD (max_balance)" in error.details()
    await credit(mesh, alice, "100.00", "c3")                 # exactly the maximum is allowed
    assert await mesh.balances(alice) == (Decimal("2000.00"), 0)


async def test_a_deposit_or_send_past_the_maximum_balance_is_refused_before_anything_moves(mesh, small_limits):
    alice, bob = await mesh.wallet("alice", "1000.00"), await mesh.wallet("bob", "1000.00")
    await credit(mesh, alice, "500.00", "top-up")            # alice: 1500.00 of at most 2000.00
    deposit = await refused(mesh.create("DEPOSIT", "600.00", "d1", destination_wallet=alice))
    assert deposit.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(deposit).reason == "BALANCE_LIMIT_EXCEEDED"
    assert "balance 1500.00 USD" in deposit.details()       # the operator may see alice's balance
    # bob, a plain user, sends to alice: refused, without being told her balance
    send = await refused(mesh.transactions.CreateTransaction(transaction_pb2.CreateTransactionRequest(
        transaction=transaction_pb2.Transaction(type=transaction_pb2.TRANSACTION_TYPE_SEND, source_wallet=bob,
                                                destination_wallet=alice, amount=usd("600.00")),
        request_id="s1"), metadata=mesh.as_user("bob"), timeout=10))
    assert send.code() == grpc.StatusCode.FAILED_PRECONDITION and error_info(send).reason == "BALANCE_LIMIT_EXCEEDED"
    assert "1500" not in send.details() and "balance" not in error_info(send).metadata
    await nothing_moved(mesh, {alice: (Decimal("1500.00"), 0), bob: (Decimal("1000.00"), 0)})


async def test_what_is_already_on_its_way_counts_towards_the_maximum_balance(mesh, small_limits):
    alice, bob = await mesh.wallet("alice", "1000.00"), await mesh.wallet("bob", "1000.00")
    await credit(mesh, alice, "500.00", "top-up")            # 1500.00
    await slow_providers(mesh, 1)                            # the first deposit stays on its way (quotes wait 2 s)
    first = await mesh.create("DEPOSIT", "400.00", "d1", destination_wallet=alice)
    error = await refused(mesh.send(bob, alice, "200.00", "s1"))    # 1500 + 400 + 200 > 2000
    assert error_info(error).reason == "BALANCE_LIMIT_EXCEEDED" and error_info(error).metadata["incoming"] == "400.00"
    last = await mesh.send(bob, alice, "100.00", "s2")       # 1500 + 400 + 100 = 2000: room for it
    assert (await mesh.settled(first.name)).state == COMPLETED and (await mesh.settled(last.name)).state == COMPLETED
    assert await mesh.wait_until(lambda: mesh.balances(alice), (Decimal("2000.00"), 0)) == (Decimal("2000.00"), 0)
    assert await mesh.balances(bob) == (Decimal("900.00"), 0)


async def test_settlement_is_never_refused_for_the_maximum_balance(mesh, small_limits):
    """A deposit accepted with room is credited even when a direct credit took the room meanwhile:
    the limit is checked when money is asked to move, never when it settles (docs/decisions.md)."""
    alice = await mesh.wallet("alice", "1000.00")
    await credit(mesh, alice, "500.00", "top-up")            # 1500.00
    await slow_providers(mesh, 1)
    deposit = await mesh.create("DEPOSIT", "500.00", "d1", destination_wallet=alice)
    await credit(mesh, alice, "400.00", "meanwhile")         # 1900.00: the wallet knows of no deposit
    assert (await mesh.settled(deposit.name)).state == COMPLETED
    assert await mesh.wait_until(lambda: mesh.balances(alice), (Decimal("2400.00"), 0)) == (Decimal("2400.00"), 0)


async def test_a_deposit_no_provider_takes_fails_at_once_and_charges_nothing(mesh):
    alice = await mesh.wallet("alice", "0")
    created = await mesh.create("DEPOSIT", "150000.00", "d-big", destination_wallet=alice)   # over every maximum
    tx = await mesh.settled(created.name, timeout=10)
    assert tx.state == FAILED and tx.failure_reason.startswith("provider: no provider takes PAY_IN of 150000.00 USD")
    assert "alpha-pay maximum is 20000 USD" in tx.failure_reason
    assert "gamma-exchange maximum is 100000 USD" in tx.failure_reason
    await asyncio.sleep(0.2)
    assert all(mesh.provider_books(p) == [] for p in PROVIDERS) and await mesh.balances(alice) == (0, 0)


# --- providers' maximums ------------------------------------------------------------------------------

def registry() -> ProviderRegistry:
    return ProviderRegistry({p.name: p for p in default_providers(seed=5)}, quote_timeout=1.0)


async def test_a_payment_over_a_providers_maximum_is_not_quoted_or_selected_there():
    reg = registry()
    request = QuoteRequest(PAY_IN, Money.parse("USD", "30000.00"))     # over alpha-pay's 20000
    quotes, failures = await reg.quotes(request)
    assert {q.provider for q in quotes} == {"beta-ramp", "gamma-exchange"}
    assert [(f.provider, f.reason, f.message) for f in failures] == [
        ("alpha-pay", "UNSUPPORTED", "alpha-pay maximum is 20000 USD")]
    selection = await reg.select(request)
    assert selection.quote.provider != "alpha-pay" and "left out alpha-pay (unsupported)" in selection.explanation


async def test_a_payment_no_provider_takes_is_refused_as_such_whatever_their_health():
    reg = registry()
    request = QuoteRequest(PAY_IN, Money.parse("USD", "150000.00"))
    for call in (reg.select(request), reg.pay(request, "pay-big")):
        with pytest.raises(FailedPrecondition) as caught:
            await call
        assert caught.value.reason == "NO_PROVIDER_ABLE"
        assert str(caught.value) == ("no provider takes PAY_IN of 150000.00 USD: alpha-pay maximum is 20000 USD; "
                                     "beta-ramp maximum is 50000 USD; gamma-exchange maximum is 100000 USD")
    assert all(not p.charges for p in reg.adapters.values())


@pytest.mark.parametrize("limits,message", [
    ("currencies: [USD]\n    maximum: {EUR: '10'}", "providers.p.maximum.EUR: is not one of the provider's currencies"),
    ("currencies: [USD]\n    minimum: {USD: '100'}\n    maximum: {USD: '10'}",
     "providers.p.minimum.USD: 100 is more than the maximum (10)"),
    ("currencies: [USD]\n    maximum: {USD: '-1'}", "providers.p.maximum.USD: must be greater than zero"),
    ("currencies: [USD]\n    maximum: {USD: .nan}", "providers.p.maximum:"),
    ("currencies: [XYZ]", "providers.p.currencies: XYZ is not in the catalogue of currencies"),
])
def test_provider_limits_are_checked_when_the_file_is_read(tmp_path, limits, message):
    path = catalogue_file(tmp_path, "providers.yaml", "providers:\n  p:\n    adapter: services.provider.simulator:SimulatedProvider\n"
                          f"    fees: {{}}\n    {limits}\n")
    with pytest.raises(ConfigError) as caught:
        load_providers(path)
    assert message in str(caught.value)
