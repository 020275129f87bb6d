"""Bad input is INVALID_ARGUMENT naming what is wrong, never INTERNAL or UNKNOWN: request bytes
that are not the request message, control characters, tampered page tokens, and random ones
(Hypothesis), against the whole mesh on each database backend."""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pool, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from diboas.blockchain.v1 import blockchain_pb2
from diboas.common.v1 import common_pb2
from diboas.events.v1 import events_pb2, events_pb2_grpc
from diboas.provider.v1 import provider_pb2
from diboas.transaction.v1 import transaction_pb2
from diboas.wallet.v1 import wallet_pb2
from services.blockchain.servicer import PAGES as CHAIN_PAGES
from services.config_files import ConfigError
from services.domain.errors import InvalidArgument
from services.runtime.config import load_topology
from services.runtime.inputs import Malformed, guarded
from services.runtime.messaging.admin import EVENTS, ITEMS
from services.runtime.messaging.admin import PAGES as DEAD_LETTER_PAGES
from services.runtime.requests import MAX_SEQUENCE, resource_id
from services.runtime.status import error_info
from services.transaction.service import PAGES as TRANSACTION_PAGES
from services.wallet.service import ENTRY_PAGES, WALLET_PAGES
from services.wallet.servicer import hold_ids

from conftest import bearer, client_channel, postgres_schema, service_token, user_token
from meshkit import start_mesh

HEALTH = "grpc.health.v1.Health"
ROOT = Path(__file__).resolve().parents[2]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            fields += [v.field for v in request.field_violations]
    return fields


def _calls(metric_service: str, method: str, code: str) -> float:
    return REGISTRY.get_sample_value("diboas_rpc_server_calls_total",
                                     {"service": metric_service, "method": method, "code": code}) or 0.0


# --- the request bytes, for every method of every service -------------------------------------------

def _length_delimited(number: int, payload: bytes) -> bytes:
    assert number < 16 and len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def _path(field) -> str:
    """A field's name in a violation: a repeated one's first element is "name[0]"."""
    return f"{field.name}[0]" if field.is_repeated else field.name


def _string_in(descriptor, value: bytes, prefix: str = "") -> tuple[bytes, str] | None:
    """Wire bytes of `descriptor` with `value` in its first (possibly nested) string field, and that field's path."""
    for field in descriptor.fields:
        if field.number >= 16:
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            return _length_delimited(field.number, value), prefix + _path(field)
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.number < 16 and not field.message_type.GetOptions().map_entry:
            inner = _string_in(field.message_type, value, f"{prefix}{_path(field)}.")
            if inner is not None:
                return _length_delimited(field.number, inner[0]), inner[1]
    return None


@contextlib.asynccontextmanager
async def _caller(mesh, service: str, method: str):
    """A channel and metadata of someone the policy lets call `method` (the operator when it may)."""
    callers = mesh.topology.services[service].allowed_callers(method)
    identity = "operator" if "operator" in callers else sorted(callers)[0]
    token = user_token(mesh.topology) if identity == "gateway" else service_token(mesh.topology, identity, service)
    async with client_channel(mesh.topology, identity, mesh.ports[service], service) as channel:
        yield channel, bearer(token)


async def _raw_call(channel, method, raw: bytes, metadata):
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.client_streaming:
        call = channel.stream_stream(path)(iter([raw]), metadata=metadata, timeout=10)
        return [reply async for reply in call]
    if method.server_streaming:
        call = channel.unary_stream(path)(raw, metadata=metadata, timeout=10)
        return [reply async for reply in call]
    return await channel.unary_unary(path)(raw, metadata=metadata, timeout=10)


@pytest.fixture
async def mesh(topology, start_server):
    """The whole mesh; `mesh.served` maps each service to the gRPC services it serves."""
    servers = {}

    async def start(topology, name, build, **kwargs):
        servers[name] = await start_server(topology, name, build, **kwargs)
        return servers[name]
    mesh = await start_mesh(topology, start)
    mesh.served = {name: [*server.grpc_services, HEALTH] for name, server in servers.items()}
    yield mesh
    await mesh.close()


async def test_every_method_of_every_service_refuses_bytes_that_are_not_its_request(mesh):
    pool, checked = descriptor_pool.Default(), 0
    methods = [(service, method) for service, served in mesh.served.items()
               for name in served for method in pool.FindServiceByName(name).methods]
    for service, method in methods:
        cases = [(b"\x0a\x05ab", "MALFORMED_REQUEST", None)]          # a field longer than the message
        if (bad := _string_in(method.input_type, b"wallets/\xff")) is not None:
            cases.append((bad[0], "MALFORMED_REQUEST", bad[1]))       # not UTF-8 (the gateway's "%FF")
        if (nul := _string_in(method.input_type, b"a\x00b")) is not None:
            cases.append((nul[0], "CONTROL_CHARACTER", nul[1]))
        async with _caller(mesh, service, method.name) as (channel, metadata):
            for raw, reason, field in cases:
                before = _calls(service, method.name, "INVALID_ARGUMENT")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _raw_call(channel, method, raw, metadata)
                where = (service, method.full_name, raw)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (where, caught.value.details())
                assert error_info(caught.value).reason == reason, where
                if field is not None:
                    assert _bad_request_fields(caught.value) == [field], where
                    assert field in caught.value.details(), where
                assert "Error" not in caught.value.details() and "Exception" not in caught.value.details(), where
                assert _calls(service, method.name, "INVALID_ARGUMENT") == before + 1, where
                checked += 1
    assert {m.containing_service.full_name for _, m in methods} >= {
        "diboas.wallet.v1.WalletService", "diboas.events.v1.EventSinkService", "diboas.events.v1.DeadLetterService",
        "diboas.transaction.v1.TransactionService", "diboas.provider.v1.ProviderService",
        "diboas.blockchain.v1.BlockchainService", HEALTH, "grpc.reflection.v1alpha.ServerReflection"}
    assert checked > 2 * len(methods)


# --- page tokens and filters, on both backends ----------------------------------------------------

@pytest.fixture
def second_database(database_url, tmp_path):
    """Another database of the backend of `database_url` (the transaction service's own)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/transaction-own.db"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
async def db_mesh(database_url, second_database, topology, start_server):
    """The whole mesh, its wallet and transaction services on the backend of `database_url`."""
    mesh = await start_mesh(topology, start_server, wallet=database_url, transaction=second_database)
    name = await mesh.wallet("alice", "10.00")
    for i in range(3):                       # ledger entries and transactions to page through
        sent = await mesh.send(name, await mesh.wallet(f"bob{i}", "0"), "1.00", f"send-{i}")
        assert (await mesh.settled(sent.name)).state == transaction_pb2.TRANSACTION_STATE_COMPLETED
    yield mesh, name
    await mesh.close()


@pytest.fixture
async def lists(db_mesh):
    """(mesh, wallet, {list: call(page_token, **fields) -> reply}) for every list of the mesh."""
    mesh, wallet = db_mesh
    async with client_channel(mesh.topology, "operator", mesh.ports["transaction"], "transaction") as channel:
        yield mesh, wallet, _lists(mesh, wallet, events_pb2_grpc.DeadLetterServiceStub(channel),
                                   bearer(service_token(mesh.topology, "operator", "transaction")))


def _lists(mesh, wallet: str, dead_letter_stub, dead_letter_metadata):
    async def wallets(token, **fields):
        return await mesh.wallets.ListWallets(wallet_pb2.ListWalletsRequest(page_size=1, page_token=token, **fields),
                                              metadata=mesh.as_operator, timeout=10)

    async def entries(token):
        return await mesh.wallets.ListLedgerEntries(wallet_pb2.ListLedgerEntriesRequest(
            parent=wallet, page_size=1, page_token=token), metadata=mesh.as_operator, timeout=10)

    async def transactions(token, **fields):
        return await mesh.transactions.ListTransactions(transaction_pb2.ListTransactionsRequest(
            page_size=1, page_token=token, **fields), metadata=mesh.as_gateway, timeout=10)

    async def dead_letters(token):
        return await dead_letter_stub.ListDeadLetters(events_pb2.ListDeadLettersRequest(
            page_size=1, page_token=token), metadata=dead_letter_metadata, timeout=10)

    async def chains(token):
        return await mesh.chain("ListChains", blockchain_pb2.ListChainsRequest(page_size=1, page_token=token))

    async def providers(token):
        return await mesh.provider("ListProviders", provider_pb2.ListProvidersRequest(page_token=token))
    return {"wallets": wallets, "ledger entries": entries, "transactions": transactions,
            "dead letters": dead_letters, "chains": chains, "providers": providers}


TAMPERED = {
    "30 digits": _b64("e:" + "9" * 30),
    "ledger entry past INTEGER": _b64("ledgerEntries|2147483648"),
    "Arabic-Indic digits": _b64("e:٣٤"),
    "Arabic-Indic digits, new form": _b64("ledgerEntries|٣٤"),
    "negative": _b64("ledgerEntries|-1"),
    "NUL": "a\x00b",
    "NUL inside": _b64("wallets|a\x00b"),
    "another list's token": _b64("chains|ethereum"),      # (on the chains list: a wallets token)
    "not base64": "!!!",
    "padding": _b64("wallets|abc") + "==",
    "a time that is not UTC": _b64("transactions|2026-01-01T00:00:00+05:00|abc"),
    "a time that is not a time": _b64("transactions|2026-13-01T00:00:00+00:00|abc"),
    "an old transaction token": _b64("2026-01-01T00:00:00+00:00|abc"),
    "too long": "A" * 4000,
}


async def _refused(call, *args, field="page_token", **kwargs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(*args, **kwargs)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert _bad_request_fields(caught.value) == [field], caught.value.details()


@pytest.mark.slow
async def test_every_list_pages_with_its_own_tokens_and_refuses_tampered_ones(lists):
    mesh, wallet, calls = lists
    for name, call in calls.items():
        if name not in ("providers", "dead letters"):          # one page / none here
            pages, token = 0, ""
            while token or not pages:
                token, pages = (await call(token)).next_page_token, pages + 1
            assert pages > 1, name
        for case, token in TAMPERED.items():
            if name == "chains" and case == "another list's token":
                token = _b64("wallets|ethereum")
            try:
                await _refused(call, token)
            except AssertionError as exc:
                raise AssertionError(f"{name}, {case}: {exc}") from None


@pytest.mark.slow
async def test_nul_and_control_characters_in_filters_are_invalid_argument(lists):
    mesh, wallet, calls = lists
    await _refused(calls["wallets"], "", owner_id="alice\x00", field="owner_id")
    await _refused(calls["transactions"], "", wallet=f"{wallet}\x00", field="wallet")
    await _refused(mesh.wallets.GetWallet, wallet_pb2.GetWalletRequest(name="wallets/\x1b[31m"),
                   metadata=mesh.as_operator, timeout=10, field="name")


# Tokens the codecs could have written (valid pages, possibly empty) and anything else.
_VALID = {
    "wallets": st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True).map(WALLET_PAGES.write),
    "ledger entries": st.integers(0, MAX_SEQUENCE).map(ENTRY_PAGES.write),
    "transactions": st.tuples(st.datetimes(timezones=st.just(dt.timezone.utc)),
                              st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))
    .map(lambda v: TRANSACTION_PAGES.write(*v)),
    "dead letters": st.tuples(st.sampled_from([EVENTS, ITEMS]), st.integers(0, MAX_SEQUENCE))
    .map(lambda v: DEAD_LETTER_PAGES.write(0, False, *v)),
    "chains": st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True).map(CHAIN_PAGES.write),
    "providers": st.nothing(),
}
# Shaped like tokens (a list's kind, a separator, a value), with values of every sort.
_VALUES = st.one_of(st.text(max_size=30), st.integers(-2**70, 2**70).map(str),
                    st.datetimes(timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=-3))]))
                    .map(dt.datetime.isoformat))
_SHAPED = st.tuples(st.sampled_from(["e", "w", "chains", "wallets", "ledgerEntries", "transactions", "deadLetters", ""]),
                    st.sampled_from([":", "|"]), _VALUES, st.sampled_from(["", "|", "|abc"])).map(lambda t: _b64("".join(t)))
_ANY = st.one_of(st.text(max_size=80), st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode()),
                 st.text(max_size=40).map(_b64), _SHAPED, st.integers(-2**70, 2**70).map(str),
                 st.sampled_from(list(TAMPERED.values())))


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_page_token_is_a_page_or_invalid_argument(lists, data):
    mesh, wallet, calls = lists
    for name, call in calls.items():
        token = data.draw(st.one_of(_ANY, _VALID[name]), label=name)
        try:
            await call(token)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, token, error.details())
            assert _bad_request_fields(error) == ["page_token"], (name, token, error.details())



NAMES = st.one_of(st.text(max_size=80), st.from_regex(r"(wallets|transactions|providers|chains)/[A-Za-z0-9_-]{0,70}\s?",
                                                      fullmatch=True))


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_resource_name_is_found_not_found_or_invalid_argument(lists, data):
    mesh, wallet, _ = lists
    gets = {
        "wallet": lambda n: mesh.wallets.GetWallet(wallet_pb2.GetWalletRequest(name=n), metadata=mesh.as_operator,
                                                    timeout=10),
        "transaction": lambda n: mesh.transactions.GetTransaction(transaction_pb2.GetTransactionRequest(name=n),
                                                                  metadata=mesh.as_gateway, timeout=10),
        "provider": lambda n: mesh.provider("GetProvider", provider_pb2.GetProviderRequest(name=n)),
        "chain": lambda n: mesh.chain("GetChain", blockchain_pb2.GetChainRequest(name=n)),
        "watched transaction": lambda n: _first(mesh.transactions.WatchTransaction(
            transaction_pb2.WatchTransactionRequest(name=n), metadata=mesh.as_gateway, timeout=10)),
    }
    for kind, get in gets.items():
        name = data.draw(st.one_of(NAMES, st.sampled_from([wallet, "providers/alpha-pay", "chains/ethereum"])),
                         label=kind)
        try:
            await get(name)
        except grpc.aio.AioRpcError as error:
            assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (kind, name, error)
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert _bad_request_fields(error) == ["name"], (kind, name, error.details())


async def _first(stream):
    """The first message of a server stream, which is then cancelled."""
    try:
        async for message in stream:
            return message
    finally:
        stream.cancel()


# --- the parts, without a mesh -----------------------------------------------------------------------

CODECS = [WALLET_PAGES, ENTRY_PAGES, TRANSACTION_PAGES, DEAD_LETTER_PAGES, CHAIN_PAGES]


@settings(max_examples=200)
@given(st.sampled_from(CODECS), st.one_of(st.text(max_size=60), st.text(max_size=60).map(_b64),
                                          st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode())))
def test_a_page_token_codec_reads_only_what_it_writes(codec, token):
    try:
        values = codec.read(token)
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] == ["page_token"]
        return
    assert values is None and token == "" or codec.write(*values) == token


@settings(max_examples=150)
@given(st.sampled_from(["wallets", "transactions", "providers", "chains"]), NAMES)
def test_a_resource_name_is_its_collection_and_an_id_or_invalid_argument(collection, name):
    try:
        found = resource_id(name, collection, "name")
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] == ["name"]
        return
    assert f"{collection}/{found}" == name and name.isascii() and name.isprintable()


def test_a_hold_name_with_a_trailing_newline_is_refused():
    with pytest.raises(InvalidArgument):
        hold_ids("wallets/a/holds/b\n")
    assert hold_ids("wallets/a/holds/b") == ("a", "b")


def test_a_service_name_with_a_trailing_newline_is_a_configuration_error(tmp_path):
    raw = yaml.safe_load((ROOT / "mesh.yaml").read_text())
    raw["services"]["provider\n"] = raw["services"].pop("provider")
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="a service name is lower-case"):
        load_topology(tmp_path / "mesh.yaml", env={})


def _refusal(message) -> tuple[str, list[str]]:
    """(reason, fields) of what the request checks make of `message`'s bytes."""
    found = guarded(type(message).FromString)(message.SerializeToString())
    assert isinstance(found, Malformed), message
    return found.error.reason, [v.field for v in found.error.violations]


def test_the_request_checks_name_repeated_nested_and_map_fields():
    select = provider_pb2.SelectProviderRequest(exclude_providers=["alpha-pay", "beta\x00"])
    assert _refusal(select) == ("CONTROL_CHARACTER", ["exclude_providers[1]"])
    created = transaction_pb2.CreateTransactionRequest(transaction=transaction_pb2.Transaction(
        amount=common_pb2.Money(currency_code="USD", amount="1.00\n")))
    assert _refusal(created) == ("CONTROL_CHARACTER", ["transaction.amount.amount"])
    # google.protobuf.Struct: a map of a type that contains itself
    nested = struct_pb2.Struct()
    nested.update({"a": {"b": ["ok", "bell\x07"]}})
    assert _refusal(nested) == ("CONTROL_CHARACTER", ["fields['a'].struct_value.fields['b'].list_value.values[1].string_value"])
    assert _refusal(struct_pb2.Struct(fields={"key\x85": struct_pb2.Value(number_value=1)}))[1] == ["fields"]
    fine = struct_pb2.Struct()
    fine.update({"a": {"b": ["ok", 1, True, None]}, "é ü 漢字": "tab-free"})
    assert guarded(struct_pb2.Struct.FromString)(fine.SerializeToString()) == fine
