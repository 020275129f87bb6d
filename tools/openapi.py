"""The REST API's OpenAPI 3.1 document, made from the descriptor set and the topology: no
hand-written spec.

    python -m tools.openapi                 # print it
    (tools.generate writes it to generated/openapi/openapi.json with the rest of generated/)

What it holds, for every route the gateway serves (an RPC with a google.api.http binding that
the topology's policy lets the gateway call, as gateway/envoy_config.py routes them):

  * the path, its `{field=collection/*}` variables spelled out as one parameter per segment
    (`/v1/wallets/{wallet}/holds/{hold}`), and the query parameters (the request's other scalar
    fields on a GET, those outside the body otherwise);
  * the request body and the answer as JSON Schema 2020-12, in proto3 JSON as the transcoder
    prints it (lowerCamel field names, 64-bit integers as strings, enums by name, Timestamp as
    RFC 3339) and as its parser reads it, which also takes each field by its proto name
    (`currency_code`), an enum by number, a 64-bit integer as a JSON number: every message a
    component of its own, its proto comments as descriptions;
  * `google.api.field_behavior`: REQUIRED fields are required (a REQUIRED string not empty),
    OUTPUT_ONLY ones read-only (ignored when sent), INPUT_ONLY ones write-only;
  * what every service checks at its edge (services/runtime/requests.py): a path parameter is
    an id (`[A-Za-z0-9_-]{1,64}`), a request_id 1 to 128 characters, a page_size not negative;
  * the bearer (JWT) security scheme, on every route;
  * the error body, a google.rpc.Status with its details, for every status the gateway can
    answer a route with: its own (401, 404, 413, 429, 431) and the service's, as Envoy's
    transcoder maps gRPC codes to HTTP.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Iterable

from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor_pb2

from services.runtime.requests import ID_PATTERN, MAX_REQUEST_ID

ROOT = Path(__file__).resolve().parent.parent
F = descriptor_pb2.FieldDescriptorProto
INT64 = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64}
UINT64 = {F.TYPE_UINT64, F.TYPE_FIXED64}
INT32 = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
UINT32 = {F.TYPE_UINT32, F.TYPE_FIXED32}
# proto3 JSON of the well-known types used by value, not as objects of their fields.
WELL_KNOWN = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time",
                                   "description": "RFC 3339, e.g. 2026-01-02T03:04:05Z"},
    ".google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
                                  "description": "seconds with an s, e.g. 1.5s"},
    ".google.protobuf.FieldMask": {"type": "string", "description": "comma-separated field paths"},
    ".google.protobuf.Struct": {"type": "object"},
    ".google.protobuf.Value": {},
    ".google.protobuf.ListValue": {"type": "array"},
    ".google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    ".google.protobuf.Any": {"type": "object", "required": ["@type"],
                             "properties": {"@type": {"type": "string", "description": "the type URL of the rest"}},
                             "description": "a message of any type, named by its @type, with that type's fields"},
    ".google.protobuf.StringValue": {"type": ["string", "null"]},
    ".google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    ".google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
    ".google.protobuf.DoubleValue": {"type": ["number", "null"]},
    ".google.protobuf.FloatValue": {"type": ["number", "null"]},
    ".google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    ".google.protobuf.UInt32Value": {"type": ["integer", "null"], "format": "uint32", "minimum": 0},
    ".google.protobuf.Int64Value": {"type": ["string", "null"], "format": "int64"},
    ".google.protobuf.UInt64Value": {"type": ["string", "null"], "format": "uint64"},
}
STATUS = ".google.rpc.Status"
# What the gateway answers besides the route's own 200, and when. Envoy's transcoder maps a
# service's gRPC code to the HTTP status (INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE
# to 400, ALREADY_EXISTS and ABORTED to 409, RESOURCE_EXHAUSTED to 429, UNAVAILABLE to 503,
# DEADLINE_EXCEEDED to 504, INTERNAL and UNKNOWN to 500); Envoy answers 401, 404, 408, 413, 429,
# 431 and, when an upstream cannot be reached or answer in time, 503 and 504 itself, all with
# the same JSON body (gateway/envoy_config.py, local_reply_config).
ERRORS = {
    "400": "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is malformed, names an "
           "unknown field or query parameter, or cannot be done in the current state; the message "
           "names what is wrong (a google.rpc.BadRequest lists the fields)",
    "401": "UNAUTHENTICATED: no valid user token (Authorization: Bearer <JWT>)",
    "403": "PERMISSION_DENIED: the token's user may not do this",
    "404": "NOT_FOUND: no such resource (or it is not the user's), or no such REST route",
    "408": "the request did not arrive within the gateway's request timeout",
    "409": "ALREADY_EXISTS or ABORTED: the resource exists, or a concurrent change won; retry",
    "413": "the request body is larger than the gateway accepts",
    "429": "RESOURCE_EXHAUSTED: the gateway's rate limit (x-diboas-rate-limited: true), or the "
           "service's backlog bound (a Retry-After header and a google.rpc.RetryInfo say when to try "
           "again); nothing was done",
    "431": "the URL and headers are larger than the gateway accepts",
    "500": "INTERNAL or UNKNOWN: a fault of the service, never of the request (report it); whether a "
           "write happened is unknown, so retry it with the same request_id",
    "503": "UNAVAILABLE: the service cannot be reached now; nothing was done, retry with backoff",
    "504": "DEADLINE_EXCEEDED: no answer in time; a write may or may not have happened, retry it "
           "with the same request_id",
}
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=([^}]*))?\}")


class OpenApiError(ValueError):
    """The descriptors hold something this generator cannot express (the message says what)."""


def _comments(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[tuple[str, tuple[int, ...]], str]:
    """Leading comments by (file, source path), their lines joined into one line of text."""
    found = {}
    for file in files:
        for location in file.source_code_info.location:
            text = " ".join(line.strip() for line in location.leading_comments.strip().splitlines() if line.strip())
            if text:
                found[(file.name, tuple(location.path))] = text
    return found


class _Types:
    """Every message and enum of the descriptor set by full name (".pkg.Name"), with the file and
    source path of each, for its comments."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet):
        self.messages: dict[str, tuple[descriptor_pb2.DescriptorProto, str, tuple[int, ...]]] = {}
        self.enums: dict[str, tuple[descriptor_pb2.EnumDescriptorProto, str, tuple[int, ...]]] = {}
        self.comments = _comments(files.file)
        for file in files.file:
            prefix = f".{file.package}" if file.package else ""
            for i, message in enumerate(file.message_type):
                self._message(message, prefix, file.name, (4, i))
            for i, enum in enumerate(file.enum_type):
                self.enums[f"{prefix}.{enum.name}"] = (enum, file.name, (5, i))

    def _message(self, message, prefix: str, file: str, path: tuple[int, ...]) -> None:
        name = f"{prefix}.{message.name}"
        self.messages[name] = (message, file, path)
        for i, nested in enumerate(message.nested_type):
            self._message(nested, name, file, (*path, 3, i))
        for i, enum in enumerate(message.enum_type):
            self.enums[f"{name}.{enum.name}"] = (enum, file, (*path, 4, i))

    def comment(self, file: str, path: tuple[int, ...]) -> str:
        return self.comments.get((file, path), "")


def _component(full_name: str) -> str:
    """The components/schemas key of a message or enum: its full name without the dot."""
    return full_name.lstrip(".")


def _behaviors(field: descriptor_pb2.FieldDescriptorProto) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


class _Schemas:
    """components/schemas: each message or enum reached from a route, once."""

    def __init__(self, types: _Types):
        self._types, self.schemas = types, {}

    def ref(self, full_name: str) -> dict:
        if full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[full_name])
        key = _component(full_name)
        if key not in self.schemas:
            self.schemas[key] = {}                     # taken before its fields: recursion ends here
            if full_name in self._types.enums:
                self.schemas[key] = self._enum(full_name)
            elif full_name in self._types.messages:
                self.schemas[key] = self.message(full_name)
            else:
                raise OpenApiError(f"type {full_name} is not in the descriptor set")
        return {"$ref": f"#/components/schemas/{key}"}

    def _enum(self, full_name: str) -> dict:
        """By name, as answers give it; the transcoder also reads a value's number, as a JSON
        number or a string ("TRANSACTION_TYPE_SEND", 1 and "1" are the same value)."""
        enum, file, path = self._types.enums[full_name]
        names, numbers = [value.name for value in enum.value], [value.number for value in enum.value]
        lines = [f"- {value.name} ({value.number}): {self._types.comment(file, (*path, 2, i))}".rstrip(": ")
                 for i, value in enumerate(enum.value)]
        description = "\n".join([self._types.comment(file, path), *lines,
                                 "Answers give the name; a request may also give the number, as a JSON number "
                                 "or a string."]).strip()
        return {"type": ["string", "integer"], "enum": [*names, *numbers, *map(str, numbers)],
                "description": description}

    def message(self, full_name: str, leave_out: Iterable[str] = ()) -> dict:
        """The object schema of a message, without the fields named in `leave_out` (the ones a
        route takes from its path)."""
        message, file, path = self._types.messages[full_name]
        properties, required, either = {}, [], []
        for i, field in enumerate(message.field):
            if field.name in leave_out:
                continue
            schema = self.field(field)
            comment = self._types.comment(file, (*path, 2, i))
            behaviors = _behaviors(field)
            if field.HasField("oneof_index") and not field.proto3_optional:
                group = message.oneof_decl[field.oneof_index].name
                comment = f"{comment} (one of {group}: set at most one)".strip()
            if comment:
                schema = {**schema, "description": comment} if "$ref" not in schema else \
                    {"allOf": [schema], "description": comment}
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behaviors:
                schema["writeOnly"] = True
            if field_behavior_pb2.REQUIRED in behaviors:      # by either of its names, when it has two
                (required.append(field.json_name) if field.name == field.json_name
                 else either.append([field.json_name, field.name]))
            properties[field.json_name] = schema = _checked(field, schema)
            if field.name != field.json_name:          # the transcoder reads the proto name too
                properties[field.name] = {**schema, "description": f"`{field.json_name}` by its proto name, "
                                          f"read in requests as well (answers use `{field.json_name}`)"}
        schema = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            schema["required"] = required
        if either:
            schema["allOf"] = [{"anyOf": [{"required": [name]} for name in names]} for names in either]
        if comment := self._types.comment(file, path):
            schema["description"] = comment
        return schema

    def field(self, field: descriptor_pb2.FieldDescriptorProto) -> dict:
        if field.type == F.TYPE_MESSAGE:
            entry = self._types.messages.get(field.type_name)
            if entry is not None and entry[0].options.map_entry:
                value = next(f for f in entry[0].field if f.name == "value")
                return {"type": "object", "additionalProperties": self.field(value)}
        item = self.scalar(field)
        if field.label == F.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item

    def scalar(self, field: descriptor_pb2.FieldDescriptorProto) -> dict:
        """One value of the field (an element, when repeated)."""
        kind = field.type
        if kind in (F.TYPE_MESSAGE, F.TYPE_ENUM):
            return self.ref(field.type_name)
        if kind == F.TYPE_STRING:
            return {"type": "string"}
        if kind == F.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == F.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return {"type": "number"}
        if kind in INT32:
            return {"type": "integer", "format": "int32", "minimum": -2**31, "maximum": 2**31 - 1}
        if kind in UINT32:
            return {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
        # Answers give a 64-bit integer as a string; the transcoder reads a JSON number too.
        if kind in INT64:
            return {"type": ["string", "integer"], "format": "int64", "pattern": r"^-?[0-9]{1,19}$",
                    "minimum": -2**63, "maximum": 2**63 - 1}
        if kind in UINT64:
            return {"type": ["string", "integer"], "format": "uint64", "pattern": r"^[0-9]{1,20}$",
                    "minimum": 0, "maximum": 2**64 - 1}
        raise OpenApiError(f"field {field.name}: type {kind} has no proto3 JSON form here")


def _checked(field: descriptor_pb2.FieldDescriptorProto, schema: dict) -> dict:
    """A field's schema with what every service checks of it at its edge: a REQUIRED string is
    not empty, a request_id (AIP-155) 1 to 128 characters, a page_size (AIP-158) not negative."""
    if field.label == F.LABEL_REPEATED:
        return schema
    if field.type == F.TYPE_STRING and field_behavior_pb2.REQUIRED in _behaviors(field):
        schema = {**schema, "minLength": 1}
    if field.type == F.TYPE_STRING and field.name == "request_id":
        schema = {**schema, "minLength": 1, "maxLength": MAX_REQUEST_ID}
    if field.type in INT32 and field.name == "page_size":
        schema = {**schema, "minimum": 0}
    return schema


def _singular(collection: str) -> str:
    """wallets -> wallet, crossChainTransfers -> crossChainTransfer, addresses -> address,
    entries -> entry (the variable of one segment)."""
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    if collection.endswith(("sses", "xes", "ches", "shes")):
        return collection[:-2]
    return collection[:-1] if collection.endswith("s") and len(collection) > 1 else f"{collection}Id"


def _path(template: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The OpenAPI path of an http rule's template, and its parameters: (parameter, the request
    field it fills, what the field holds). `{name=wallets/*/holds/*}` becomes
    `wallets/{wallet}/holds/{hold}`, both parameters filling `name` with "wallets/{wallet}/holds/{hold}"."""
    parameters: list[tuple[str, str, str]] = []

    def spell(match: re.Match) -> str:
        field, pattern = match.group(1), match.group(2) or "*"
        if "." in field:
            raise OpenApiError(f"{template}: a path variable of a nested field ({field}) is not supported")
        segments, spelled, names, previous = pattern.split("/"), [], [], field
        for segment in segments:
            if segment == "**":
                raise OpenApiError(f"{template}: a multi-segment variable (**) is not supported")
            if segment == "*":
                name = _singular(previous) if previous != field or len(segments) > 1 else field
                if name in names or any(name == p for p, _, _ in parameters):
                    name = f"{name}{len(parameters) + len(names) + 1}"
                names.append(name)
                spelled.append(f"{{{name}}}")
            else:
                spelled.append(segment)
            previous = segment
        parameters.extend((name, field, "/".join(spelled)) for name in names)
        return "/".join(spelled)
    return _VARIABLE.sub(spell, template), parameters


def _query_parameters(schemas: _Schemas, types: _Types, request: str, taken: set[str]) -> list[dict]:
    """The request's fields that are not in the path or the body, as query parameters (scalars,
    enums and repeated scalars; the transcoder reads them by their proto3 JSON names too)."""
    message, file, path = types.messages[request]
    found = []
    for i, field in enumerate(message.field):
        if field.name in taken:
            continue
        if field.type == F.TYPE_MESSAGE:
            raise OpenApiError(f"{request}.{field.name}: a message field as query parameters (a.b=...) is not "
                               "supported; bind it to the body")
        schema = _checked(field, schemas.field(field))
        parameter = {"name": field.json_name, "in": "query", "schema": schema,
                     "required": field_behavior_pb2.REQUIRED in _behaviors(field)}
        if schema.get("type") == "array":
            parameter.update(style="form", explode=True)
        comment = types.comment(file, (*path, 2, i))
        if field.name != field.json_name:
            comment = f"{comment} (also read by its proto name, `{field.name}`)".strip()
        if comment:
            parameter["description"] = comment
        found.append(parameter)
    return found


def _field_named(types: _Types, message: str, name: str, what: str) -> descriptor_pb2.FieldDescriptorProto:
    field = next((f for f in types.messages[message][0].field if f.name == name), None)
    if field is None:
        raise OpenApiError(f"{what} {name!r} is not a field of {message}")
    return field


def _operation(schemas: _Schemas, types: _Types, service: str, method, file: str,
               path: tuple[int, ...]) -> tuple[str, str, dict]:
    rule = method.options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    if verb == "custom" or rule.additional_bindings:
        raise OpenApiError(f"{service}.{method.name}: custom verbs and additional bindings are not supported")
    url, variables = _path(getattr(rule, verb))
    request, response = method.input_type, method.output_type
    bound = {field for _, field, _ in variables}
    operation: dict = {"operationId": f"{service.rsplit('.', 1)[-1]}_{method.name}",
                       "tags": [service.rsplit(".", 1)[-1]]}
    if summary := types.comment(file, path):
        operation["description"] = summary
    parameters = [{"name": name, "in": "path", "required": True,
                   "description": f"the `{field}` field is `{holds}`" if holds != f"{{{name}}}"
                   else f"the `{field}` field",
                   "schema": {"type": "string", "pattern": ID_PATTERN}}
                  for name, field, holds in variables]
    body_field = rule.body
    if body_field == "*":
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": schemas.message(request, leave_out=bound)}}}
        taken = {f.name for f in types.messages[request][0].field}
    elif body_field:
        field = _field_named(types, request, body_field, f"{service}.{method.name}: body")
        operation["requestBody"] = {"required": field_behavior_pb2.REQUIRED in _behaviors(field),
                                    "content": {"application/json": {"schema": schemas.field(field)}}}
        taken = bound | {body_field}
    else:
        taken = bound
    parameters += _query_parameters(schemas, types, request, taken)
    if parameters:
        operation["parameters"] = parameters
    if rule.response_body:
        answer = schemas.field(_field_named(types, response, rule.response_body,
                                            f"{service}.{method.name}: response_body"))
    else:
        answer = schemas.ref(response)
    description = "OK"
    if method.server_streaming:     # the transcoder sends the stream as one JSON array, element by element
        answer = {"type": "array", "items": answer}
        description = "OK: the stream's messages, as the elements of one JSON array, each sent as it comes"
    operation["responses"] = {"200": {"description": description, "content": {"application/json": {"schema": answer}}}}
    for code in ERRORS:
        if code == "413" and not body_field:
            continue
        operation["responses"][code] = {"$ref": f"#/components/responses/{code}"}
    return url, verb, operation


def document(files: descriptor_pb2.FileDescriptorSet, routed: set[tuple[str, str]], title: str = "diBoaS API",
             version: str = "v1") -> dict:
    """The OpenAPI document of the RPCs in `routed` ((full service name, method) pairs)."""
    types = _Types(files)
    schemas = _Schemas(types)
    paths: dict[str, dict] = {}
    for file in sorted(files.file, key=lambda f: f.name):
        for s, service in enumerate(file.service):
            full = f"{file.package}.{service.name}"
            for m, method in enumerate(service.method):
                if (full, method.name) not in routed:
                    continue
                url, verb, operation = _operation(schemas, types, full, method, file.name, (6, s, 2, m))
                if verb in paths.setdefault(url, {}):
                    raise OpenApiError(f"two routes for {verb.upper()} {url}")
                paths[url][verb] = operation
    status = schemas.ref(STATUS)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {"title": title, "version": version,
                 "description": "The REST API of the diBoaS mesh, served by its gateway (Envoy's gRPC-JSON "
                                "transcoder) in front of the gRPC services. Generated from the protos; "
                                "field names in proto3 JSON (lowerCamel)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": sorted(({"name": tag} for tag in {op["tags"][0] for ops in paths.values() for op in ops.values()}),
                       key=lambda t: t["name"]),
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                           "description": "a user token (ES256) from the platform's issuer"}},
            "responses": {code: {"description": text, "content": {"application/json": {"schema": status}}}
                          for code, text in ERRORS.items()},
            "schemas": dict(sorted(schemas.schemas.items())),
        },
    }


def routed_rpcs(root: Path = ROOT, descriptors: Path | None = None) -> set[tuple[str, str]]:
    """The RPCs the gateway routes with the repository's mesh.yaml (no environment overrides)."""
    from gateway.envoy_config import DESCRIPTORS, external_rpcs
    from services.runtime.config import load_topology
    topology = load_topology(root / "mesh.yaml", env={})
    return {(rpc.grpc_service, rpc.method) for rpc in external_rpcs(topology, descriptors or DESCRIPTORS)}


def render(descriptors: Path, root: Path = ROOT) -> str:
    """The document as written to generated/: sorted keys, two-space indent, a final newline."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    return json.dumps(document(files, routed_rpcs(root, descriptors)), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.openapi", description=__doc__.split("\n")[0])
    parser.add_argument("--descriptors", type=Path, default=ROOT / "generated" / "descriptors" / "diboas.binpb")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(render(args.descriptors))
    except OpenApiError as exc:
        print(f"openapi: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
