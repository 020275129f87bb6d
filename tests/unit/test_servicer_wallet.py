"""WalletServicer on a fake WalletService: names, money and keys read from the requests, each bad
field named, the service's domain values written back, its domain errors passed through."""
from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal

import grpc
import pytest

from diboas.common.v1 import common_pb2
from diboas.wallet.v1 import wallet_pb2
from services.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.domain.money import Money
from services.runtime.users import User
from services.wallet.ledger import Hold, Wallet
from services.wallet.repository import LedgerEntry
from services.wallet.service import Page
from services.wallet.servicer import WalletServicer

from servicing import Recorder, Served, refusal_in

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
LATER = NOW + dt.timedelta(minutes=5)
ALICE = User("alice", frozenset())


def usd(amount: str) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USD", amount=amount)


def a_wallet(wallet_id: str = "w1", owner: str = "alice", available: str = "12.5", held: str = "2") -> Wallet:
    return Wallet(wallet_id, owner, "USD", Decimal(available), Decimal(held), NOW, LATER)


def a_hold(state: str = "ACTIVE", destination: str | None = None) -> Hold:
    return Hold("h1", "w1", Decimal("2"), state, "order-7", destination, NOW, LATER)


def an_entry(entry_type: str = "CREDIT") -> LedgerEntry:
    return LedgerEntry(41, "w1", 17, entry_type, Decimal("5"), Decimal("17.5"), Decimal("2"), "ref-1", NOW)


class FakeWalletService(Recorder):
    """The WalletService methods the servicer calls; the idempotent ones answer with `encode`
    of their domain result, as the real one does."""

    def __init__(self):
        super().__init__()
        self.wallets = {"w1": a_wallet(), "w2": a_wallet("w2", "bob", "0", "0")}
        self.page = Page([], "")
        self.hold = a_hold()

    async def create_wallet(self, request_id, fingerprint, owner_id, currency, encode, viewer=None):
        self.record("create_wallet", request_id=request_id, fingerprint=fingerprint, owner_id=owner_id,
                    currency=currency, viewer=viewer)
        return encode(Wallet("w9", owner_id, currency, Decimal(0), Decimal(0), NOW, NOW))

    async def get_wallet(self, wallet_id, viewer=None):
        self.record("get_wallet", wallet_id=wallet_id, viewer=viewer)
        if wallet_id not in self.wallets:
            raise NotFound(f"wallet wallets/{wallet_id} does not exist", reason="WALLET_NOT_FOUND")
        return self.wallets[wallet_id]

    async def get_wallets(self, wallet_ids, viewer=None):
        self.record("get_wallets", wallet_ids=wallet_ids, viewer=viewer)
        return [await self.get_wallet(wallet_id, viewer) for wallet_id in wallet_ids]

    async def list_wallets(self, owner_id, size, token, viewer=None):
        self.record("list_wallets", owner_id=owner_id, size=size, token=token, viewer=viewer)
        return self.page

    async def validate_balance(self, wallet_id, amount, viewer=None):
        self.record("validate_balance", wallet_id=wallet_id, amount=amount, viewer=viewer)
        wallet = self.wallets[wallet_id]
        return wallet, False, amount - wallet.money(wallet.available)

    async def list_entries(self, wallet_id, size, token, viewer=None):
        self.record("list_entries", wallet_id=wallet_id, size=size, token=token, viewer=viewer)
        return self.page

    async def create_hold(self, request_id, fingerprint, wallet_id, amount, reference, encode):
        self.record("create_hold", request_id=request_id, wallet_id=wallet_id, amount=amount, reference=reference)
        return encode((self.hold, self.wallets[wallet_id]))

    async def get_hold(self, wallet_id, hold_id):
        self.record("get_hold", wallet_id=wallet_id, hold_id=hold_id)
        return self.hold

    async def capture_hold(self, request_id, fingerprint, wallet_id, hold_id, destination_id, encode):
        self.record("capture_hold", request_id=request_id, wallet_id=wallet_id, hold_id=hold_id,
                    destination_id=destination_id)
        return encode(a_hold("CAPTURED", destination_id))

    async def release_hold(self, request_id, fingerprint, wallet_id, hold_id, encode):
        self.record("release_hold", request_id=request_id, wallet_id=wallet_id, hold_id=hold_id)
        return encode(a_hold("RELEASED"))

    async def credit(self, request_id, fingerprint, wallet_id, amount, reference, encode):
        self.record("credit", request_id=request_id, wallet_id=wallet_id, amount=amount, reference=reference)
        return encode((self.wallets[wallet_id], an_entry("CREDIT")))

    async def debit(self, request_id, fingerprint, wallet_id, amount, reference, encode):
        self.record("debit", request_id=request_id, wallet_id=wallet_id, amount=amount, reference=reference)
        return encode((self.wallets[wallet_id], an_entry("DEBIT")))


@pytest.fixture
def service() -> FakeWalletService:
    return FakeWalletService()


@pytest.fixture
def served(service) -> Served:
    return Served(wallet_pb2.DESCRIPTOR.services_by_name["WalletService"], WalletServicer(service))


def test_create_wallet_asks_for_the_owner_and_currency_and_answers_the_wallet(served, service):
    request = wallet_pb2.CreateWalletRequest(request_id="r-1", wallet=wallet_pb2.Wallet(owner_id="bob",
                                                                                          currency_code="USD"))
    reply = served.call("CreateWallet", request)
    asked = service.last("create_wallet")
    assert (asked["request_id"], asked["owner_id"], asked["currency"], asked["viewer"]) == ("r-1", "bob", "USD", None)
    assert asked["fingerprint"] and asked["fingerprint"] != "r-1"
    wallet = reply.wallet
    assert (wallet.name, wallet.owner_id, wallet.currency_code) == ("wallets/w9", "bob", "USD")
    assert wallet.available_balance == usd("0.00") and wallet.held_balance == usd("0.00")
    assert wallet.create_time.ToDatetime(tzinfo=dt.timezone.utc) == NOW


def test_a_users_wallet_is_theirs_by_default_and_their_request_ids_are_their_own(served, service):
    served.user = ALICE
    served.call("CreateWallet", wallet_pb2.CreateWalletRequest(request_id="r-1",
                                                               wallet=wallet_pb2.Wallet(currency_code="USD")))
    asked = service.last("create_wallet")
    assert asked["owner_id"] == "alice" and asked["viewer"] == ALICE
    assert asked["request_id"] == "user:" + hashlib.sha256(b"alice\0r-1").hexdigest()


def test_each_bad_field_is_named(served):
    W = wallet_pb2
    assert served.misnamed({
        "no request id": ("CreateWallet", W.CreateWalletRequest(
            wallet=W.Wallet(owner_id="bob", currency_code="USD")), "request_id"),
        "no owner": ("CreateWallet", W.CreateWalletRequest(
            request_id="r", wallet=W.Wallet(currency_code="USD")), "wallet.owner_id"),
        "an unknown currency": ("CreateWallet", W.CreateWalletRequest(
            request_id="r", wallet=W.Wallet(owner_id="bob", currency_code="XYZ")), "wallet.currency_code"),
        "a wallet name without its collection": ("GetWallet", W.GetWalletRequest(name="w1"), "name"),
        "no wallet names": ("BatchGetWallets", W.BatchGetWalletsRequest(), "names"),
        "101 wallet names": ("BatchGetWallets", W.BatchGetWalletsRequest(names=["wallets/w1"] * 101), "names"),
        "a second name without its collection": ("BatchGetWallets", W.BatchGetWalletsRequest(
            names=["wallets/w1", "w2"]), "names[1]"),
        "no amount": ("ValidateBalance", W.ValidateBalanceRequest(wallet="wallets/w1"), "amount"),
        "a negative amount": ("ValidateBalance", W.ValidateBalanceRequest(wallet="wallets/w1", amount=usd("-1")),
                              "amount.amount"),
        "a parent that is no wallet": ("ListLedgerEntries", W.ListLedgerEntriesRequest(parent="holds/h1"), "parent"),
        "a hold without an amount": ("CreateHold", W.CreateHoldRequest(request_id="r", parent="wallets/w1"),
                                     "hold.amount"),
        "a hold name of a wallet": ("GetHold", W.GetHoldRequest(name="wallets/w1"), "name"),
        "a destination that is no wallet": ("CaptureHold", W.CaptureHoldRequest(
            request_id="r", name="wallets/w1/holds/h1", destination_wallet="w2"), "destination_wallet"),
        "a credit without a wallet": ("CreditWallet", W.CreditWalletRequest(request_id="r", amount=usd("1")), "wallet"),
        "a debit of more decimals than the currency has": ("DebitWallet", W.DebitWalletRequest(
            request_id="r", wallet="wallets/w1", amount=usd("1.001")), "amount.amount"),
    }) == {}


def test_get_wallet_reads_the_id_and_passes_not_found_through(served, service):
    served.user = ALICE
    reply = served.call("GetWallet", wallet_pb2.GetWalletRequest(name="wallets/w1"))
    assert reply.wallet.name == "wallets/w1" and reply.wallet.available_balance == usd("12.50")
    assert service.last("get_wallet") == {"wallet_id": "w1", "viewer": ALICE}
    refused = served.refusal("GetWallet", wallet_pb2.GetWalletRequest(name="wallets/nope"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "WALLET_NOT_FOUND")


def test_batch_get_wallets_answers_in_the_order_asked_and_passes_not_found_through(served, service):
    served.user = ALICE
    names = ["wallets/w2", "wallets/w1", "wallets/w2"]
    reply = served.call("BatchGetWallets", wallet_pb2.BatchGetWalletsRequest(names=names))
    assert [w.name for w in reply.wallets] == names and reply.wallets[0].owner_id == "bob"
    assert service.last("get_wallets") == {"wallet_ids": ["w2", "w1", "w2"], "viewer": ALICE}
    refused = served.refusal("BatchGetWallets", wallet_pb2.BatchGetWalletsRequest(names=["wallets/w1", "wallets/nope"]))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "WALLET_NOT_FOUND")


def test_list_wallets_leaves_paging_to_the_service_and_answers_its_page(served, service):
    service.page = Page([a_wallet(), a_wallet("w2", "bob")], "next-please")
    reply = served.call("ListWallets", wallet_pb2.ListWalletsRequest(owner_id="bob", page_size=7, page_token="tok"))
    assert service.last("list_wallets") == {"owner_id": "bob", "size": 7, "token": "tok", "viewer": None}
    assert [w.name for w in reply.wallets] == ["wallets/w1", "wallets/w2"]
    assert reply.next_page_token == "next-please"


def test_validate_balance_reads_the_amount_and_answers_the_shortfall(served, service):
    reply = served.call("ValidateBalance", wallet_pb2.ValidateBalanceRequest(wallet="wallets/w1", amount=usd("20")))
    assert service.last("validate_balance")["amount"] == Money("USD", Decimal("20"))
    assert not reply.sufficient
    assert (reply.available_balance, reply.shortfall) == (usd("12.50"), usd("7.50"))
    assert reply.wallet.name == "wallets/w1"


def test_ledger_entries_are_written_in_their_wallets_currency(served, service):
    service.page = Page([an_entry("HOLD_CAPTURE")], "")
    reply = served.call("ListLedgerEntries", wallet_pb2.ListLedgerEntriesRequest(parent="wallets/w1", page_size=3))
    assert service.last("list_entries")["wallet_id"] == "w1" and service.last("list_entries")["size"] == 3
    [entry] = reply.ledger_entries
    assert entry.name == "wallets/w1/ledgerEntries/41"
    assert entry.type == wallet_pb2.LEDGER_ENTRY_TYPE_HOLD_CAPTURE
    assert (entry.amount, entry.available_balance_after, entry.held_balance_after) == (
        usd("5.00"), usd("17.50"), usd("2.00"))
    assert (entry.journal_id, entry.reference) == ("17", "ref-1")


def test_create_hold_reserves_the_amount_and_answers_hold_and_wallet(served, service):
    reply = served.call("CreateHold", wallet_pb2.CreateHoldRequest(
        request_id="r-2", parent="wallets/w1", hold=wallet_pb2.Hold(amount=usd("2"), reference="order-7")))
    asked = service.last("create_hold")
    assert (asked["wallet_id"], asked["amount"], asked["reference"]) == ("w1", Money("USD", Decimal(2)), "order-7")
    assert (reply.hold.name, reply.hold.state, reply.hold.amount) == (
        "wallets/w1/holds/h1", wallet_pb2.HOLD_STATE_ACTIVE, usd("2.00"))
    assert reply.hold.destination_wallet == "" and reply.wallet.name == "wallets/w1"


@pytest.mark.parametrize("destination,destination_id", [("wallets/w2", "w2"), ("", None)])
def test_capture_hold_reads_both_ids_and_the_destination(served, service, destination, destination_id):
    reply = served.call("CaptureHold", wallet_pb2.CaptureHoldRequest(
        request_id="r-3", name="wallets/w1/holds/h1", destination_wallet=destination))
    asked = service.last("capture_hold")
    assert (asked["wallet_id"], asked["hold_id"], asked["destination_id"]) == ("w1", "h1", destination_id)
    assert reply.hold.state == wallet_pb2.HOLD_STATE_CAPTURED and reply.hold.destination_wallet == destination


def test_release_hold_and_get_hold_answer_in_the_wallets_currency(served, service):
    released = served.call("ReleaseHold", wallet_pb2.ReleaseHoldRequest(request_id="r-4", name="wallets/w1/holds/h1"))
    assert service.last("release_hold") == {"request_id": "r-4", "wallet_id": "w1", "hold_id": "h1"}
    assert released.hold.state == wallet_pb2.HOLD_STATE_RELEASED and released.hold.amount == usd("2.00")
    got = served.call("GetHold", wallet_pb2.GetHoldRequest(name="wallets/w1/holds/h1"))
    assert service.last("get_hold") == {"wallet_id": "w1", "hold_id": "h1"} and got.hold.reference == "order-7"


@pytest.mark.parametrize("method,operation,entry_type", [
    ("CreditWallet", "credit", wallet_pb2.LEDGER_ENTRY_TYPE_CREDIT),
    ("DebitWallet", "debit", wallet_pb2.LEDGER_ENTRY_TYPE_DEBIT),
])
def test_credit_and_debit_move_the_amount_on_their_own_operation(served, service, method, operation, entry_type):
    request = getattr(wallet_pb2, f"{method}Request")(request_id="r-5", wallet="wallets/w1", amount=usd("5"),
                                                      reference="ref-1")
    reply = served.call(method, request)
    assert service.names() == [operation]
    asked = service.last(operation)
    assert (asked["wallet_id"], asked["amount"], asked["reference"]) == ("w1", Money("USD", Decimal(5)), "ref-1")
    assert reply.wallet.name == "wallets/w1" and reply.ledger_entry.type == entry_type


def test_a_refusal_of_the_service_keeps_its_reason_and_field(served, service):
    service.failure = InvalidArgument("amount.currency_code: wallets/w1 holds USD, not EUR", reason="CURRENCY_MISMATCH",
                                      violations=[FieldViolation("amount.currency_code", "must be USD")])
    refused = served.refusal("DebitWallet", wallet_pb2.DebitWalletRequest(
        request_id="r-6", wallet="wallets/w1", amount=common_pb2.Money(currency_code="EUR", amount="1")))
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CURRENCY_MISMATCH")
    assert refused.fields == {"amount.currency_code": "must be USD"}


def test_batch_create_holds_answers_each_request_on_its_own(served, service):
    original = service.create_hold

    async def create_hold(request_id, fingerprint, wallet_id, amount, reference, encode):
        if wallet_id == "w2":
            raise FailedPrecondition("insufficient funds in wallets/w2", reason="INSUFFICIENT_FUNDS")
        return await original(request_id, fingerprint, wallet_id, amount, reference, encode)
    service.create_hold = create_hold

    def hold(parent: str, request_id: str) -> wallet_pb2.CreateHoldRequest:
        return wallet_pb2.CreateHoldRequest(request_id=request_id, parent=parent,
                                            hold=wallet_pb2.Hold(amount=usd("2"), reference="order-7"))
    reply = served.call("BatchCreateHolds", wallet_pb2.BatchCreateHoldsRequest(requests=[
        hold("wallets/w1", "r-1"), hold("wallets/w2", "r-2"), hold("wallets/not a name", "r-3"), hold("wallets/w1", "")]))
    outcomes = [refusal_in(outcome.status) for outcome in reply.outcomes]
    assert [(o.code.name, o.reason, list(o.fields)) for o in outcomes] == [
        ("OK", "", []), ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS", []),
        ("INVALID_ARGUMENT", "INVALID_ARGUMENT", ["parent"]), ("INVALID_ARGUMENT", "INVALID_ARGUMENT", ["request_id"])]
    assert reply.outcomes[0].response.hold.name == "wallets/w1/holds/h1"
    assert reply.outcomes[0].response.wallet.name == "wallets/w1"
    assert not any(outcome.HasField("response") for outcome in reply.outcomes[1:])
    # the request asked as CreateHold would have asked it; the refused ones never reached the service
    assert [call["request_id"] for name, call in service.calls if name == "create_hold"] == ["r-1"]


def test_a_bug_in_one_request_of_a_batch_fails_only_that_one(served, service):
    original = service.create_hold

    async def create_hold(request_id, fingerprint, wallet_id, amount, reference, encode):
        if request_id == "r-2":
            raise KeyError("a bug")
        return await original(request_id, fingerprint, wallet_id, amount, reference, encode)
    service.create_hold = create_hold
    reply = served.call("BatchCreateHolds", wallet_pb2.BatchCreateHoldsRequest(requests=[
        wallet_pb2.CreateHoldRequest(request_id=key, parent="wallets/w1", hold=wallet_pb2.Hold(amount=usd("1")))
        for key in ("r-1", "r-2", "r-3")]))
    assert [refusal_in(outcome.status).code.name for outcome in reply.outcomes] == ["OK", "INTERNAL", "OK"]
    assert "a bug" not in reply.outcomes[1].status.message


@pytest.mark.parametrize("size", [0, 101])
def test_a_batch_of_no_holds_or_too_many_is_refused_naming_requests(served, service, size):
    request = wallet_pb2.BatchCreateHoldsRequest(requests=[
        wallet_pb2.CreateHoldRequest(request_id=f"r-{i}", parent="wallets/w1", hold=wallet_pb2.Hold(amount=usd("1")))
        for i in range(size)])
    refused = served.refusal("BatchCreateHolds", request)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and list(refused.fields) == ["requests"]
    assert service.names() == []
