"""The contracts (protos/) and what is generated from them (generated/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.api import annotations_pb2  # registers the google.api.http extension
from google.protobuf import descriptor_pb2

from tools import generate

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "generated" / "descriptors" / "diboas.binpb"

EXPECTED_RPCS = {
    "diboas.wallet.v1.WalletService": [
        "CreateWallet", "GetWallet", "BatchGetWallets", "ListWallets", "ValidateBalance", "ListLedgerEntries",
        "CreateHold", "BatchCreateHolds", "GetHold", "CaptureHold", "ReleaseHold", "CreditWallet", "DebitWallet",
    ],
    "diboas.transaction.v1.TransactionService": ["CreateTransaction", "GetTransaction", "ListTransactions",
                                               "WatchTransaction"],
    "diboas.provider.v1.ProviderService": [
        "ListProviders", "GetProvider", "GetProviderHealth", "GetQuotes", "SelectProvider",
        "ExecutePayment", "GetPayment", "SetProviderFaults",
    ],
    "diboas.blockchain.v1.BlockchainService": [
        "ListChains", "GetChain", "ExecuteCrossChainTransfer", "GetCrossChainTransfer",
        "GetTransactionStatus", "SetChainFaults",
    ],
    "diboas.compliance.v1.ComplianceService": [
        "ScreenTransaction", "BatchScreenTransactions", "GetScreening", "ListScreenings", "ReviewScreening",
    ],
    "diboas.events.v1.EventSinkService": ["DeliverEvent", "DeliverEvents"],
    "diboas.events.v1.DeadLetterService": ["ListDeadLetters", "ReplayDeadLetters"],
}
# The four external services: every RPC must have a REST mapping and, when it mutates, a request_id.
EXTERNAL_SERVICES = [name for name in EXPECTED_RPCS if not name.startswith("diboas.events.")]
READ_ONLY_PREFIXES = ("Get", "BatchGet", "List", "Validate", "Watch")


@pytest.fixture(scope="module")
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(DESCRIPTOR_SET.read_bytes())
    return fds


def _diboas_files(fds: descriptor_pb2.FileDescriptorSet) -> list[descriptor_pb2.FileDescriptorProto]:
    return [f for f in fds.file if f.package.startswith("diboas.")]


def _services(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.ServiceDescriptorProto]:
    return {f"{f.package}.{s.name}": s for f in _diboas_files(fds) for s in f.service}


def _messages(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages) -> None:
        for m in messages:
            found[f"{prefix}.{m.name}"] = m
            walk(f"{prefix}.{m.name}", m.nested_type)

    for f in fds.file:
        walk(f.package, f.message_type)
    return found


def test_generated_is_up_to_date() -> None:
    diff = generate.check()
    assert not diff, "generated/ is stale, run `make generate`:\n" + diff.report()


def test_generated_python_imports() -> None:
    from diboas.blockchain.v1 import blockchain_pb2_grpc  # noqa: F401
    from diboas.events.v1 import events_pb2_grpc  # noqa: F401
    from diboas.provider.v1 import provider_pb2_grpc  # noqa: F401
    from diboas.transaction.v1 import transaction_pb2_grpc  # noqa: F401
    from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc

    assert hasattr(wallet_pb2_grpc, "WalletServiceServicer")
    assert wallet_pb2.DESCRIPTOR.package == "diboas.wallet.v1"


def test_services_have_exactly_the_expected_rpcs(descriptor_set) -> None:
    services = _services(descriptor_set)
    assert sorted(services) == sorted(EXPECTED_RPCS)
    for name, rpcs in EXPECTED_RPCS.items():
        assert [m.name for m in services[name].method] == rpcs, name


@pytest.mark.parametrize("service", EXTERNAL_SERVICES)
def test_every_external_rpc_has_an_http_rule(descriptor_set, service) -> None:
    for method in _services(descriptor_set)[service].method:
        rule = method.options.Extensions[annotations_pb2.http]
        path = getattr(rule, rule.WhichOneof("pattern") or "get", "")
        assert path.startswith("/v1/"), f"{service}.{method.name} has no google.api.http rule"


@pytest.mark.parametrize("service", EXTERNAL_SERVICES)
def test_every_mutating_rpc_takes_a_request_id(descriptor_set, service) -> None:
    messages = _messages(descriptor_set)
    for method in _services(descriptor_set)[service].method:
        if method.name.startswith(READ_ONLY_PREFIXES):
            continue
        request = messages[method.input_type.lstrip(".")]
        fields = {f.name: f for f in request.field}
        if method.name.startswith("Batch") and "requests" in fields:      # each request its own key (AIP-233)
            request = messages[fields["requests"].type_name.lstrip(".")]
            fields = {f.name: f for f in request.field}
        assert "request_id" in fields, f"{service}.{method.name}: {request.name} has no request_id"
        assert fields["request_id"].type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING


def test_request_and_response_are_named_after_the_rpc(descriptor_set) -> None:
    for service_name, service in _services(descriptor_set).items():
        package = service_name.rsplit(".", 1)[0]
        for method in service.method:
            assert method.input_type == f".{package}.{method.name}Request"
            assert method.output_type == f".{package}.{method.name}Response"


def test_list_rpcs_are_paged(descriptor_set) -> None:
    messages = _messages(descriptor_set)
    for service_name, service in _services(descriptor_set).items():
        for method in service.method:
            if not method.name.startswith("List"):
                continue
            request = {f.name for f in messages[method.input_type.lstrip(".")].field}
            response = {f.name for f in messages[method.output_type.lstrip(".")].field}
            assert {"page_size", "page_token"} <= request, f"{service_name}.{method.name}"
            assert "next_page_token" in response, f"{service_name}.{method.name}"


def test_no_float_or_double_anywhere(descriptor_set) -> None:
    inexact = {descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE}
    only_diboas = descriptor_pb2.FileDescriptorSet(file=_diboas_files(descriptor_set))
    offenders = [
        f"{name}.{field.name}"
        for name, message in _messages(only_diboas).items()
        for field in message.field
        if field.type in inexact
    ]
    assert len(_messages(only_diboas)) > 50
    assert offenders == []


def test_money_is_a_decimal_string(descriptor_set) -> None:
    money = _messages(descriptor_set)["diboas.common.v1.Money"]
    assert [(f.name, f.type) for f in money.field] == [
        ("currency_code", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
        ("amount", descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ]


def test_descriptor_set_carries_error_details(descriptor_set) -> None:
    messages = _messages(descriptor_set)
    for name in ("google.rpc.Status", "google.rpc.ErrorInfo", "google.rpc.BadRequest"):
        assert name in messages
    # Source info is kept (comments in the transcoder's and reflection's view).
    wallet = next(f for f in descriptor_set.file if f.name == "diboas/wallet/v1/wallet.proto")
    assert wallet.source_code_info.location


# --- the --check itself, on a copy of the tree -------------------------------------------


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for part in ("protos", "generated"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mesh.yaml", tmp_path / "mesh.yaml")       # which RPCs the gateway routes
    return tmp_path


def test_check_fails_when_a_proto_changes(tree_copy: Path) -> None:
    proto = tree_copy / "protos" / "diboas" / "common" / "v1" / "common.proto"
    proto.write_text(proto.read_text().replace("string amount = 2;", "string amount = 2;\n  // Added.\n  string note = 3;"))
    diff = generate.check(tree_copy)
    assert "python/diboas/common/v1/common_pb2.py" in diff.changed
    assert "descriptors/diboas.binpb" in diff.changed
    assert "openapi/openapi.json" in diff.changed              # Money has a new field
    assert not diff.missing and not diff.extra


def test_check_lists_missing_and_extra_files(tree_copy: Path) -> None:
    (tree_copy / "generated" / "python" / "diboas" / "wallet" / "v1" / "wallet_pb2.pyi").unlink()
    (tree_copy / "generated" / "python" / "diboas" / "stray.py").write_text("")
    (tree_copy / "generated" / "python" / "diboas" / "__pycache__").mkdir()  # run-time caches are ignored
    diff = generate.check(tree_copy)
    assert diff.missing == ["python/diboas/wallet/v1/wallet_pb2.pyi"]
    assert diff.extra == ["python/diboas/stray.py"]
    assert diff.changed == []


def test_failed_generation_keeps_the_old_output(tree_copy: Path) -> None:
    before = (tree_copy / "generated" / "descriptors" / "diboas.binpb").read_bytes()
    proto = tree_copy / "protos" / "diboas" / "common" / "v1" / "common.proto"
    proto.write_text(proto.read_text() + "\nmessage Broken { NoSuchType x = 1; }\n")
    with pytest.raises(generate.GenerateError):
        generate.generate(tree_copy)
    assert (tree_copy / "generated" / "descriptors" / "diboas.binpb").read_bytes() == before
    assert not list(tree_copy.glob(".generated-*"))


def test_generate_on_a_copy_is_deterministic(tree_copy: Path) -> None:
    generate.generate(tree_copy)
    assert not generate.compare(ROOT / "generated", tree_copy / "generated")
