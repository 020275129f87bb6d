"""The wallet's use cases on a real database (SQLite and PostgreSQL): the double-entry ledger,
holds, idempotency, bad input, and balances under concurrent load."""
from __future__ import annotations

import asyncio
import json
import random
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from services.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.domain.money import Money
from services.runtime.db import Database
from services.runtime.requests import USER_KEYS
from services.runtime.users import User
from services.wallet.repository import WalletRepository
from services.wallet.service import WalletService
from services.wallet.tables import idempotency_keys

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "wallet" / "migrations"


def usd(text: str) -> Money:
    return Money.parse("USD", text)


def encode_wallet(w) -> bytes:
    return json.dumps({"id": w.id, "available": f"{w.available:f}", "held": f"{w.held:f}"}).encode()


def encode_pair(pair) -> bytes:
    first, second = pair
    return json.dumps([getattr(first, "id", None), str(getattr(second, "id", ""))]).encode()


def encode_hold(h) -> bytes:
    return json.dumps({"id": h.id, "state": h.state}).encode()


@pytest.fixture
async def wallets(database_url):
    db = Database(database_url, MIGRATIONS)
    db.migrate()
    yield WalletService(db)
    db.close()


async def new_wallet(service: WalletService, owner: str, currency: str = "USD", funds: str | None = None):
    created = json.loads(await service.create_wallet(f"create-{owner}-{currency}", "fp", owner, currency,
                                                     encode_wallet))
    if funds:
        await service.credit(f"fund-{owner}", "fp", created["id"], Money.parse(currency, funds), "initial",
                             encode_pair)
    return created["id"]


def audit(service: WalletService) -> dict[str, Decimal]:
    """Every account's balance from the postings; checks that the wallets' balances agree with them."""
    with service.db.engine.connect() as connection:
        repo = WalletRepository(connection)
        sums = repo.account_sums()
        for wallet in repo.list_wallets(None, None, 10_000):
            assert sums.get(f"wallet:{wallet.id}:available", Decimal(0)) == wallet.available
            assert sums.get(f"wallet:{wallet.id}:held", Decimal(0)) == wallet.held
            assert wallet.available >= 0 and wallet.held >= 0
    assert sum(sums.values(), Decimal(0)) == 0  # double entry: the whole ledger balances
    return sums


async def test_credit_debit_and_the_ledger(wallets):
    w = await new_wallet(wallets, "alice", funds="100.00")
    await wallets.debit("d1", "fp", w, usd("30.25"), "coffee", encode_pair)
    wallet = await wallets.get_wallet(w)
    assert wallet.available == Decimal("69.75") and wallet.held == 0
    page = await wallets.list_entries(w, 10, "")
    assert [(e.type, e.amount, e.available_after) for e in page.items] == [
        ("DEBIT", Decimal("30.25"), Decimal("69.75")), ("CREDIT", Decimal("100.00"), Decimal("100.00"))]
    sums = audit(wallets)
    assert sums["external:USD"] == Decimal("-69.75")


async def test_several_wallets_are_read_at_once_in_the_order_asked(wallets):
    a = await new_wallet(wallets, "alice", funds="5.00")
    b = await new_wallet(wallets, "bob")
    found = await wallets.get_wallets([b, a, b])
    assert [(w.id, w.owner_id, w.available) for w in found] == [
        (b, "bob", Decimal("0")), (a, "alice", Decimal("5.00")), (b, "bob", Decimal("0"))]
    with pytest.raises(NotFound, match="wallet wallets/nope does not exist"):
        await wallets.get_wallets([a, "nope", "gone"])
    with pytest.raises(NotFound, match=f"wallet wallets/{b} does not exist"):     # someone else's
        await wallets.get_wallets([a, b], User("alice", frozenset()))


async def test_hold_capture_to_another_wallet_moves_money_once(wallets):
    a = await new_wallet(wallets, "alice", funds="50.00")
    b = await new_wallet(wallets, "bob")
    hold = json.loads(await wallets.create_hold("h1", "fp", a, usd("20.00"), "tx-1",
                                                lambda pair: encode_hold(pair[0])))
    assert (await wallets.get_wallet(a)).held == Decimal("20.00")
    captured = json.loads(await wallets.capture_hold("c1", "fp", a, hold["id"], b, encode_hold))
    assert captured["state"] == "CAPTURED"
    again = json.loads(await wallets.capture_hold("c1", "fp", a, hold["id"], b, encode_hold))
    assert again == captured                                   # same key: the first answer, nothing moved
    with pytest.raises(FailedPrecondition, match="is captured, not active"):
        await wallets.capture_hold("c2", "fp", a, hold["id"], b, encode_hold)
    with pytest.raises(FailedPrecondition, match="is captured, not active"):
        await wallets.release_hold("r1", "fp", a, hold["id"], encode_hold)
    alice, bob = await wallets.get_wallet(a), await wallets.get_wallet(b)
    assert (alice.available, alice.held, bob.available) == (Decimal("30.00"), 0, Decimal("20.00"))
    audit(wallets)


async def test_release_returns_the_money(wallets):
    a = await new_wallet(wallets, "alice", funds="10.00")
    hold = json.loads(await wallets.create_hold("h1", "fp", a, usd("10.00"), "tx", lambda p: encode_hold(p[0])))
    with pytest.raises(FailedPrecondition, match="insufficient funds"):
        await wallets.debit("d1", "fp", a, usd("0.01"), "", encode_pair)
    await wallets.release_hold("r1", "fp", a, hold["id"], encode_hold)
    wallet = await wallets.get_wallet(a)
    assert (wallet.available, wallet.held) == (Decimal("10.00"), 0)
    audit(wallets)


async def test_same_request_id_with_another_body_is_rejected(wallets):
    a = await new_wallet(wallets, "alice", funds="10.00")
    await wallets.debit("same", "fp-1", a, usd("1.00"), "", encode_pair)
    with pytest.raises(AlreadyExists, match="request_id 'same' was already used for a different request"):
        await wallets.debit("same", "fp-2", a, usd("2.00"), "", encode_pair)
    with pytest.raises(AlreadyExists, match="already used"):
        await wallets.credit("same", "fp-1", a, usd("1.00"), "", encode_pair)   # another operation
    assert (await wallets.get_wallet(a)).available == Decimal("9.00")


async def test_a_users_reused_request_id_is_refused_without_showing_how_it_is_stored(wallets):
    a = await new_wallet(wallets, "alice", funds="10.00")
    stored = USER_KEYS + "5568" * 16            # as requests.request_id keeps a user's key
    await wallets.debit(stored, "fp-1", a, usd("1.00"), "", encode_pair)
    with pytest.raises(AlreadyExists) as refused:
        await wallets.debit(stored, "fp-2", a, usd("2.00"), "", encode_pair)
    assert refused.value.message.startswith("this request_id was already used for a different request")
    assert "5568" not in refused.value.message and refused.value.reason == "REQUEST_ID_REUSED"


async def test_bad_input_changes_nothing(wallets):
    a = await new_wallet(wallets, "alice", funds="10.00")
    before = audit(wallets)
    with pytest.raises(FailedPrecondition) as caught:
        await wallets.debit("d", "fp", a, usd("10.01"), "", encode_pair)
    assert caught.value.reason == "INSUFFICIENT_FUNDS"
    with pytest.raises(InvalidArgument) as caught:
        await wallets.credit("c", "fp", a, Money.parse("EUR", "1"), "", encode_pair)
    assert caught.value.reason == "CURRENCY_MISMATCH" and caught.value.violations[0].field == "amount.currency_code"
    with pytest.raises(NotFound, match="wallets/nope does not exist"):
        await wallets.credit("c2", "fp", "nope", usd("1"), "", encode_pair)
    with pytest.raises(AlreadyExists, match="already has a USD wallet"):
        await wallets.create_wallet("again", "fp", "alice", "USD", encode_wallet)
    with pytest.raises(InvalidArgument, match="page_token"):
        await wallets.list_entries(a, 10, "garbage!")
    with pytest.raises(InvalidArgument, match="page_size"):
        await wallets.list_wallets("", -1, "")
    assert audit(wallets) == before
    with wallets.db.engine.connect() as connection:                          # failures are not replayed
        assert connection.execute(select(idempotency_keys).where(idempotency_keys.c.request_id == "d")).first() is None


async def test_paging(wallets):
    ids = [await new_wallet(wallets, f"owner-{i:02d}") for i in range(7)]
    seen, token = [], ""
    while True:
        page = await wallets.list_wallets("", 3, token)
        seen += [w.id for w in page.items]
        if not (token := page.next_page_token):
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7


async def test_concurrent_transfers_keep_every_cent(wallets):
    """Many concurrent holds and captures among a few wallets: the ledger balances, no balance goes
    negative, and the total is what was deposited."""
    ids = [await new_wallet(wallets, f"w{i}", funds="100.00") for i in range(6)]
    rng = random.Random(7)

    async def transfer(n: int):
        source, destination = rng.sample(ids, 2)
        amount = usd(f"{rng.randint(1, 4000) / 100:.2f}")
        try:
            hold = json.loads(await wallets.create_hold(f"h{n}", "fp", source, amount, f"t{n}",
                                                        lambda p: encode_hold(p[0])))
        except FailedPrecondition:
            return "declined"
        if rng.random() < 0.2:
            await wallets.release_hold(f"r{n}", "fp", source, hold["id"], encode_hold)
            return "released"
        await wallets.capture_hold(f"c{n}", "fp", source, hold["id"], destination, encode_hold)
        return "captured"

    outcomes = await asyncio.gather(*(transfer(n) for n in range(150)))
    assert "captured" in outcomes
    sums = audit(wallets)
    total = sum((sums.get(f"wallet:{i}:available", Decimal(0)) + sums.get(f"wallet:{i}:held", Decimal(0))
                 for i in ids), Decimal(0))
    assert total == Decimal("600.00")
    assert all(sums.get(f"wallet:{i}:held", Decimal(0)) == 0 for i in ids)


async def test_an_unreachable_database_is_unavailable_not_internal(caplog):
    from services.domain.errors import ServiceUnavailable
    db = Database("postgresql+psycopg://postgres@127.0.0.1:1/test", MIGRATIONS)   # nothing listens on port 1
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await WalletService(db).get_wallet("w1")
    finally:
        db.close()
    # The caller may retry; where the database is, and what its driver said, stay in the log.
    assert caught.value.reason == "DATABASE_UNAVAILABLE" and "retry" in caught.value.message
    assert "127.0.0.1" not in caught.value.message and "postgres" not in caught.value.message
    assert any("127.0.0.1:1" in r.getMessage() for r in caplog.records if r.name == "diboas.db")
