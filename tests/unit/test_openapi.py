"""The OpenAPI document in generated/openapi/: valid OpenAPI 3.1, one operation per REST route
the gateway serves and no other, and the protos' meaning carried over (names, required and
output-only fields, 64-bit integers, enums, timestamps, errors)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate

from gateway.envoy_config import DESCRIPTORS, OPENAPI, external_rpcs
from services.runtime.config import load_topology
from tools import openapi

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(OPENAPI.read_text())


@pytest.fixture(scope="module")
def files() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())


def operations(document: dict) -> dict[str, tuple[str, str, dict]]:
    return {op["operationId"]: (verb, path, op) for path, ops in document["paths"].items() for verb, op in ops.items()}


def schema(document: dict, name: str) -> dict:
    return document["components"]["schemas"][name]


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_the_committed_document_is_what_the_generator_makes_now():
    assert OPENAPI.read_text() == openapi.render(DESCRIPTORS, ROOT)


def test_one_operation_per_route_the_gateway_serves_and_no_other(document, files):
    routed = external_rpcs(load_topology(ROOT / "mesh.yaml", env={}))
    ops = operations(document)
    assert sorted(ops) == sorted(f"{rpc.grpc_service.rsplit('.', 1)[-1]}_{rpc.method}" for rpc in routed)
    methods = {(f"{f.package}.{s.name}", m.name): m for f in files.file for s in f.service for m in s.method}
    for rpc in routed:
        verb, path, _ = ops[f"{rpc.grpc_service.rsplit('.', 1)[-1]}_{rpc.method}"]
        rule = methods[(rpc.grpc_service, rpc.method)].options.Extensions[annotations_pb2.http]
        assert verb == rule.WhichOneof("pattern")
        # The document's path, its parameters filled in, is a URL the http rule's template matches.
        template = re.escape(getattr(rule, verb))
        template = re.sub(r"\\\{[a-z_]+(?:=([^}]*))?\\\}",
                          lambda m: (m.group(1) or r"\*").replace(r"\*", "[^/]+"), template)
        url = re.sub(r"\{[A-Za-z0-9]+\}", "abc", path)
        assert re.fullmatch(template, url), (path, getattr(rule, verb))


def test_path_variables_are_one_parameter_per_segment(document):
    ops = operations(document)
    verb, path, op = ops["WalletService_GetWallet"]
    assert (verb, path) == ("get", "/v1/wallets/{wallet}")
    [parameter] = op["parameters"]
    assert parameter["in"] == "path" and parameter["required"] and "wallets/{wallet}" in parameter["description"]
    assert ops["WalletService_ValidateBalance"][1] == "/v1/wallets/{wallet}:validateBalance"


def test_query_parameters_are_the_fields_outside_the_path_and_the_body(document):
    ops = operations(document)
    names = {p["name"]: p for p in ops["TransactionService_ListTransactions"][2]["parameters"]}
    assert set(names) == {"wallet", "pageSize", "pageToken"}
    assert all(p["in"] == "query" and not p["required"] for p in names.values())
    assert names["pageSize"]["schema"]["type"] == "integer"
    create = ops["TransactionService_CreateTransaction"][2]
    assert [p["name"] for p in create["parameters"]] == ["requestId"]     # body: "transaction"
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/diboas.transaction.v1.Transaction"}


def test_a_body_star_request_leaves_out_the_fields_in_the_path(document):
    body = operations(document)["WalletService_ValidateBalance"][2]["requestBody"]["content"]["application/json"]
    assert "wallet" not in body["schema"]["properties"] and "amount" in body["schema"]["properties"]
    assert body["schema"]["additionalProperties"] is False


def test_field_behavior_and_proto3_json_naming(document):
    wallet = schema(document, "diboas.wallet.v1.Wallet")
    # Required by either of its names (the transcoder reads both); ownerId is not: a user's own wallet.
    assert "required" not in wallet
    assert wallet["allOf"] == [{"anyOf": [{"required": ["currencyCode"]}, {"required": ["currency_code"]}]}]
    assert schema(document, "diboas.transaction.v1.Transaction")["required"] == ["type", "amount"]   # one name each
    assert wallet["properties"]["name"]["readOnly"] is True
    assert wallet["properties"]["createTime"]["type"] == "string"
    assert wallet["properties"]["createTime"]["format"] == "date-time"
    assert wallet["properties"]["availableBalance"]["allOf"] == [{"$ref": "#/components/schemas/diboas.common.v1.Money"}]
    assert "Identifier of the owner" in wallet["properties"]["ownerId"]["description"]
    ref = schema(document, "diboas.common.v1.ChainTransactionRef")
    assert ref["properties"]["blockNumber"]["type"] == ["string", "integer"]       # answers: a string; read: both
    assert ref["properties"]["blockNumber"]["format"] == "int64"
    assert ref["properties"]["blockNumber"]["maximum"] == 2**63 - 1


def test_a_server_stream_answers_a_json_array_of_its_messages(document):
    verb, path, op = operations(document)["TransactionService_WatchTransaction"]
    assert (verb, path) == ("get", "/v1/transactions/{transaction}:watch")
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"type": "array", "items": {"$ref": "#/components/schemas/diboas.transaction.v1.WatchTransactionResponse"}}
    unary = operations(document)["TransactionService_GetTransaction"][2]["responses"]["200"]
    assert unary["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/diboas.transaction.v1.GetTransactionResponse"}


def test_enums_are_their_value_names_and_a_request_may_give_the_number(document):
    kinds = schema(document, "diboas.transaction.v1.TransactionType")
    assert kinds["type"] == ["string", "integer"]
    names = ["TRANSACTION_TYPE_UNSPECIFIED", "TRANSACTION_TYPE_SEND", "TRANSACTION_TYPE_DEPOSIT",
             "TRANSACTION_TYPE_WITHDRAW", "TRANSACTION_TYPE_BRIDGE"]
    assert kinds["enum"] == [*names, 0, 1, 2, 3, 4, "0", "1", "2", "3", "4"]   # the transcoder reads all three
    assert "TRANSACTION_TYPE_SEND (1): From one wallet to another" in kinds["description"]


def test_a_field_is_read_by_its_proto_name_too(document):
    wallet = schema(document, "diboas.wallet.v1.Wallet")
    assert wallet["properties"]["currency_code"]["type"] == wallet["properties"]["currencyCode"]["type"] == "string"
    assert "`currencyCode` by its proto name" in wallet["properties"]["currency_code"]["description"]
    assert "name" in wallet["properties"] and "owner_id" in wallet["properties"]
    assert wallet["additionalProperties"] is False                 # any other name is refused
    pages = {p["name"]: p for p in operations(document)["WalletService_ListWallets"][2]["parameters"]}
    assert "`page_size`" in pages["pageSize"]["description"]


def test_what_every_service_checks_at_its_edge_is_in_the_document(document):
    ops = operations(document)
    create = ops["WalletService_CreateWallet"][2]
    [request_id] = create["parameters"]
    assert request_id["required"] and request_id["schema"] == {"type": "string", "minLength": 1, "maxLength": 128}
    assert schema(document, "diboas.wallet.v1.Wallet")["properties"]["currencyCode"]["minLength"] == 1  # REQUIRED
    pages = {p["name"]: p["schema"] for p in ops["WalletService_ListWallets"][2]["parameters"]}
    assert pages["pageSize"]["minimum"] == 0
    [wallet] = ops["WalletService_GetWallet"][2]["parameters"]
    assert wallet["schema"] == {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
    assert re.fullmatch(wallet["schema"]["pattern"][1:-1], "0f3a_b-C") and not re.fullmatch(
        wallet["schema"]["pattern"][1:-1], "a:b")


def test_every_route_documents_its_errors_as_a_google_rpc_status(document):
    status = schema(document, "google.rpc.Status")
    assert set(status["properties"]) == {"code", "message", "details"}
    assert status["properties"]["details"]["items"]["required"] == ["@type"]
    for verb, path, op in operations(document).values():
        codes = set(op["responses"])
        assert {"200", "400", "401", "403", "404", "408", "429", "431", "500", "503", "504"} <= codes, (verb, path)
        assert ("413" in codes) == ("requestBody" in op), (verb, path)
    for response in document["components"]["responses"].values():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/google.rpc.Status"}


def test_the_bearer_scheme_covers_every_route(document):
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "a user token (ES256) from the platform's issuer"}
    assert document["security"] == [{"bearer": []}]
    assert all("security" not in op for _, _, op in operations(document).values())


def test_what_the_generator_cannot_express_is_a_clear_error(files):
    broken = descriptor_pb2.FileDescriptorSet()
    broken.CopyFrom(files)
    wallet = next(f for f in broken.file if f.package == "diboas.wallet.v1")
    method = next(m for s in wallet.service for m in s.method if m.name == "GetWallet")
    method.options.Extensions[annotations_pb2.http].get = "/v1/{name=wallets/**}"
    with pytest.raises(openapi.OpenApiError, match=r"/v1/\{name=wallets/\*\*\}: a multi-segment variable"):
        openapi.document(broken, {("diboas.wallet.v1.WalletService", "GetWallet")})
