"""TransactionServicer on a fake TransactionService: the draft each type of transaction asks for
(names normalised, money read), each bad field named, transactions written back (parked sagas and
chain references too), the service's domain errors passed through."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import NamedTuple

import grpc
import pytest

from diboas.common.v1 import common_pb2
from diboas.transaction.v1 import transaction_pb2
from services.domain.errors import NotFound
from services.domain.money import Money
from services.runtime.users import User
from services.transaction.domain import Parked, Screened, Transaction
from services.transaction.servicer import TransactionServicer

from servicing import Recorder, Served

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
ADDRESS = "0x" + "ab" * 20
T = transaction_pb2


class Page(NamedTuple):
    """A page as the service answers one (items and the token of the next)."""

    items: list
    next_page_token: str


def usd(amount: str) -> common_pb2.Money:
    return common_pb2.Money(currency_code="USD", amount=amount)


class FakeTransactionService(Recorder):
    """The TransactionService methods the servicer calls. `create` answers with `encode` of the
    draft as created (an id, PENDING, timestamps), as the real one does."""

    def __init__(self):
        super().__init__()
        self.page = Page([], "")
        self.found: Transaction | None = None

    async def create(self, request_id, fingerprint, draft, encode, viewer=None):
        self.record("create", request_id=request_id, fingerprint=fingerprint, draft=draft, viewer=viewer)
        draft.id, draft.state, draft.created_at, draft.updated_at = "t1", "PENDING", NOW, NOW
        return encode(draft)

    async def get(self, transaction_id, viewer=None):
        self.record("get", transaction_id=transaction_id, viewer=viewer)
        if self.found is None:
            raise NotFound(f"transaction transactions/{transaction_id} does not exist", reason="TRANSACTION_NOT_FOUND")
        return self.found

    async def list(self, wallet, size, token, viewer=None):
        self.record("list", wallet=wallet, size=size, token=token, viewer=viewer)
        return self.page


@pytest.fixture
def service() -> FakeTransactionService:
    return FakeTransactionService()


@pytest.fixture
def served(service) -> Served:
    return Served(T.DESCRIPTOR.services_by_name["TransactionService"], TransactionServicer(service))


def create(**fields) -> T.CreateTransactionRequest:
    return T.CreateTransactionRequest(request_id="r-1", transaction=T.Transaction(**fields))


def test_a_send_becomes_a_draft_between_two_wallets_and_is_answered_as_created(served, service):
    served.user = User("alice", frozenset())
    reply = served.call("CreateTransaction", create(type=T.TRANSACTION_TYPE_SEND, source_wallet="wallets/a",
                                                    destination_wallet="wallets/b", amount=usd("12.5")))
    asked = service.last("create")
    draft = asked["draft"]
    assert (draft.type, draft.source_wallet, draft.destination_wallet) == ("SEND", "wallets/a", "wallets/b")
    assert draft.amount == Money("USD", Decimal("12.5")) and asked["viewer"] == served.user
    assert asked["request_id"].startswith("user:") and asked["fingerprint"]
    tx = reply.transaction
    assert (tx.name, tx.type, tx.state) == ("transactions/t1", T.TRANSACTION_TYPE_SEND, T.TRANSACTION_STATE_PENDING)
    assert tx.amount == usd("12.50") and not tx.HasField("complete_time") and not tx.HasField("parked")


def test_a_bridge_carries_its_chains_and_address_and_a_deposit_its_provider(served, service):
    served.call("CreateTransaction", create(type=T.TRANSACTION_TYPE_BRIDGE, source_wallet="wallets/a",
                                            source_chain="chains/ethereum", target_chain="chains/polygon",
                                            destination_address=ADDRESS, amount=usd("3")))
    bridge = service.last("create")["draft"]
    assert (bridge.source_chain, bridge.target_chain, bridge.destination_address) == (
        "chains/ethereum", "chains/polygon", ADDRESS)
    served.call("CreateTransaction", create(type=T.TRANSACTION_TYPE_DEPOSIT, destination_wallet="wallets/b",
                                            provider="providers/stripe", amount=usd("3")))
    deposit = service.last("create")["draft"]
    assert (deposit.type, deposit.source_wallet, deposit.provider) == ("DEPOSIT", "", "providers/stripe")


SEND = dict(type=T.TRANSACTION_TYPE_SEND, source_wallet="wallets/a", destination_wallet="wallets/b", amount=usd("1"))
BRIDGE = dict(type=T.TRANSACTION_TYPE_BRIDGE, source_wallet="wallets/a", source_chain="chains/ethereum",
              target_chain="chains/polygon", destination_address=ADDRESS, amount=usd("1"))


def test_each_bad_field_is_named(served):
    no_amount = {k: v for k, v in SEND.items() if k != "amount"}
    assert served.misnamed({
        "no request id": ("CreateTransaction", T.CreateTransactionRequest(transaction=T.Transaction(**SEND)),
                          "request_id"),
        "a source that is no wallet": ("CreateTransaction", create(**{**SEND, "source_wallet": "a"}),
                                       "transaction.source_wallet"),
        "a provider that is no provider": ("CreateTransaction", create(
            type=T.TRANSACTION_TYPE_DEPOSIT, destination_wallet="wallets/b", provider="stripe", amount=usd("1")),
            "transaction.provider"),
        "no amount": ("CreateTransaction", create(**no_amount), "transaction.amount"),
        "a zero amount": ("CreateTransaction", create(**{**SEND, "amount": usd("0")}), "transaction.amount.amount"),
        "a name of another collection": ("GetTransaction", T.GetTransactionRequest(name="wallets/t1"), "name"),
        "a wallet filter that is no wallet": ("ListTransactions", T.ListTransactionsRequest(wallet="a"), "wallet"),
    }) == {}


def test_get_writes_back_a_parked_saga_and_its_chain_transactions(served, service):
    service.found = Transaction(
        "t1", "BRIDGE", "PROCESSING", "wallets/a", "", Money("USD", Decimal("3")), "wallets/a/holds/h1", "", NOW, NOW,
        None, source_chain="chains/ethereum", target_chain="chains/polygon", destination_address=ADDRESS,
        cross_chain_transfer="crossChainTransfers/x1", chain_transactions=[("chains/ethereum", "0xabc", 12)],
        parked=Parked("MAX_ATTEMPTS", "chain unavailable", 5, NOW, 42))
    tx = served.call("GetTransaction", T.GetTransactionRequest(name="transactions/t1")).transaction
    assert service.last("get") == {"transaction_id": "t1", "viewer": None}
    assert (tx.state, tx.hold, tx.cross_chain_transfer) == (
        T.TRANSACTION_STATE_PROCESSING, "wallets/a/holds/h1", "crossChainTransfers/x1")
    assert [(c.chain, c.transaction_hash, c.block_number) for c in tx.chain_transactions] == [
        ("chains/ethereum", "0xabc", 12)]
    assert (tx.parked.reason, tx.parked.last_error, tx.parked.attempts, tx.parked.dead_letter_id) == (
        "MAX_ATTEMPTS", "chain unavailable", 5, 42)


@pytest.mark.parametrize("screened, decision", [
    (None, T.COMPLIANCE_DECISION_UNSPECIFIED),
    (Screened("screenings/s1", "HELD", "held for a compliance review"), T.COMPLIANCE_DECISION_HELD),
    (Screened("screenings/s1", "REJECTED", "refused by compliance screening (sanctions)"),
     T.COMPLIANCE_DECISION_REJECTED),
    (Screened("screenings/s1", "APPROVED", ""), T.COMPLIANCE_DECISION_APPROVED),
])
def test_get_writes_back_the_screenings_decision_and_the_users_reason(served, service, screened, decision):
    service.found = Transaction("t1", "SEND", "PENDING", "wallets/a", "wallets/b", Money("USD", Decimal("3")), "",
                                "", NOW, NOW, None, compliance=screened)
    tx = served.call("GetTransaction", T.GetTransactionRequest(name="transactions/t1")).transaction
    assert tx.HasField("compliance") == (screened is not None)
    assert (tx.compliance.decision, tx.compliance.screening, tx.compliance.reason) == (
        decision, screened.screening if screened else "", screened.reason if screened else "")


def test_get_passes_not_found_through(served):
    refused = served.refusal("GetTransaction", T.GetTransactionRequest(name="transactions/t9"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND")


@pytest.mark.parametrize("wallet,filtered", [("wallets/a", "wallets/a"), ("", "")])
def test_list_filters_by_the_wallet_name_and_leaves_paging_to_the_service(served, service, wallet, filtered):
    service.page = Page([Transaction("t1", "SEND", "COMPLETED", "wallets/a", "wallets/b", Money("USD", Decimal(1)),
                                     "", "", NOW, NOW, NOW)], "more")
    reply = served.call("ListTransactions", T.ListTransactionsRequest(wallet=wallet, page_size=2, page_token="tok"))
    assert service.last("list") == {"wallet": filtered, "size": 2, "token": "tok", "viewer": None}
    assert [t.name for t in reply.transactions] == ["transactions/t1"] and reply.next_page_token == "more"
    assert reply.transactions[0].complete_time.ToDatetime(tzinfo=dt.timezone.utc) == NOW
