"""The Envoy configuration of the API gateway, rendered from the topology (mesh.yaml) and the
descriptor set in generated/: nothing in it is written by hand twice.

  listeners  the REST API on gateway.http and, with the gateway's certificate, gateway.https:
             URL and header size limit (431), user JWTs (jwt_authn, keys from
             certs/out/jwks.json) read first, then a rate limit per user and a smaller one for
             all requests without a valid token (429), then the token required (401), request
             size limit (413), REST <-> gRPC
             (grpc_json_transcoder: the google.api.http annotations are the routes; unknown
             paths 404, unknown query parameters and malformed bodies 400; gRPC errors become
             their HTTP status with the google.rpc.Status as JSON), JSON access logs with
             the upstream's own gRPC status
  routes     one per RPC the topology's policy lets the gateway call (anything else is 404);
             reads (GET bindings) are retried when the upstream is unavailable, writes never;
             and, without a token, GET /openapi.json (generated/openapi/openapi.json) and the
             API reference page GET /docs (Swagger UI from the pinned swagger-ui-dist package)
  clusters   one per service: HTTP/2 over mTLS with the gateway's certificate, the server's
             SPIFFE id checked, gRPC health checks, outlier detection, connect timeouts
  admin      on loopback only
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from services.config_files import REPO_ROOT
from services.runtime.config import GatewayConfig, Topology, is_ip
from services.runtime.server import MAX_METADATA_BYTES
from services.runtime.users import AUDIENCE, ISSUER

DESCRIPTORS = REPO_ROOT / "generated" / "descriptors" / "diboas.binpb"
OPENAPI = REPO_ROOT / "generated" / "openapi" / "openapi.json"
DOCS = Path(__file__).parent / "docs"
SWAGGER_UI = REPO_ROOT / "node_modules" / "swagger-ui-dist"
_TYPED = "type.googleapis.com/envoy.extensions"
_JWT_METADATA = "envoy.filters.http.jwt_authn"     # where jwt_authn puts what it verified

# What a request may carry in its URL and headers (beyond: 431). The service receives them
# all (the URL as x-envoy-original-path, the transcoder's :path being the RPC's), counted by
# gRPC with 32 bytes more an entry, and a few short headers of Envoy's own: all within what
# a server accepts, so none of it comes back as RESOURCE_EXHAUSTED (a misleading 429).
MAX_HEADERS = 100
MAX_REQUEST_HEADERS_KB = (MAX_METADATA_BYTES - MAX_HEADERS * 32 - 4096) // 1024
# An error's gRPC status, kept aside while the transcoder turns it into an HTTP status (and drops
# it), then put back: so the access log's %GRPC_STATUS% is the service's, not one guessed from
# the HTTP status (404 would read UNIMPLEMENTED). An answer's trailers keep theirs anyway.
_KEPT_GRPC_STATUS = "x-diboas-grpc-status"
STREAM_IDLE_SECONDS = 330       # a server stream that sends nothing this long is reset
MAX_REQUESTS_PER_SERVICE = 8192
# Where jwt_authn finds the token: `authorization: Bearer <token>`, the scheme in any case (an
# HTTP auth scheme is case-insensitive; jwt_authn compares its prefix exactly, so every spelling
# of "bearer" is listed: 64 of them, always in the same order).
BEARER_HEADERS = [{"name": "authorization", "value_prefix": "".join(spelling) + " "}
                  for spelling in itertools.product(*((c, c.upper()) for c in "bearer"))]


@dataclass(frozen=True)
class Rpc:
    service: str            # topology name, e.g. "wallet"
    grpc_service: str       # e.g. "diboas.wallet.v1.WalletService"
    method: str             # e.g. "GetWallet"
    verb: str               # the HTTP verb of its google.api.http binding
    template: str           # the path template, e.g. "/v1/{name=wallets/*}"
    streams: bool = False   # a server-streaming RPC: it answers for as long as the service streams

    @property
    def path(self) -> str:
        return f"/{self.grpc_service}/{self.method}"

    @property
    def read(self) -> bool:
        return self.verb == "get"


def external_rpcs(topology: Topology, descriptors: Path = DESCRIPTORS) -> list[Rpc]:
    """The RPCs with a REST binding that the topology's policy lets the gateway call."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    gateway = topology.gateway.name
    rpcs = []
    for file in files.file:
        parts = file.package.split(".")
        if len(parts) != 3 or parts[0] != "diboas" or parts[1] not in topology.services:
            continue
        policy = topology.services[parts[1]].policy
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                callers = policy.get(method.name, policy.get("*", frozenset()))
                if verb and verb != "custom" and gateway in callers:
                    rpcs.append(Rpc(parts[1], f"{file.package}.{service.name}", method.name, verb,
                                    getattr(rule, verb), method.server_streaming))
    return rpcs


def _json_reply(code: int, grpc_code: int, message: str, method: str | None = None) -> dict:
    """A local reply of Envoy's (not the upstream's) as JSON shaped like a google.rpc.Status; with
    `method`, only for requests with that method."""
    status = {"status_code_filter": {"comparison": {"op": "EQ", "value": {
        "default_value": code, "runtime_key": f"diboas.local_reply.{code}"}}}}
    match = {"and_filter": {"filters": [status, {"header_filter": {"header": {
        "name": ":method", "string_match": {"exact": method}}}}]}} if method else status
    return {"filter": match,
            "body_format_override": {"json_format": {"code": grpc_code, "message": message, "details": []}}}


def _cluster(topology: Topology, name: str) -> dict:
    service, certs = topology.services[name], topology.certs_dir
    return {
        "name": name,
        # A DNS name (a Kubernetes headless Service) stands for every address it resolves to.
        "type": "STATIC" if all(is_ip(a.host) for a in service.endpoints) else "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        # Every instance of the service; the health checks below leave out those not SERVING.
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": a.host, "port_value": a.port}}}}
            for a in service.endpoints]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": f"{_TYPED}.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": f"{_TYPED}.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],                 # gRPC servers speak HTTP/2 only
                "tls_certificates": [{"certificate_chain": {"filename": str(certs / f"{topology.gateway.name}.crt")},
                                      "private_key": {"filename": str(certs / f"{topology.gateway.name}.key")}}],
                "validation_context": {
                    "trusted_ca": {"filename": str(certs / "ca.crt")},
                    "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": service.identity}}]},
            }}},
        "health_checks": [{"timeout": "1s", "interval": "2s", "no_traffic_interval": "2s",
                           "unhealthy_threshold": 2, "healthy_threshold": 1,
                           "grpc_health_check": {"authority": name}}],
        # Eject on failures of the connection (refused, reset, timed out), not on the errors a
        # service answers: a user could otherwise get a healthy service ejected with bad requests.
        "outlier_detection": {"split_external_local_origin_errors": True, "consecutive_local_origin_failure": 3,
                              "enforcing_consecutive_local_origin_failure": 100, "enforcing_consecutive_5xx": 0,
                              "enforcing_consecutive_gateway_failure": 0, "enforcing_success_rate": 0,
                              "interval": "2s", "base_ejection_time": "5s", "max_ejection_percent": 100},
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},   # no healthy host: 503 at once
        # Requests in flight to the service at once, open streams included (each WatchTransaction
        # holds one for up to 300 s): Envoy's default, 1,024, is what 1,000 open watches in one
        # instance would nearly fill, leaving ordinary requests 503 overflows.
        "circuit_breakers": {"thresholds": [{"max_requests": MAX_REQUESTS_PER_SERVICE}]},
    }


@dataclass(frozen=True)
class Page:
    path: str               # what a client GETs
    file: Path              # what it gets
    content_type: str
    cache: str = "no-cache"     # Swagger UI's files change only with the pinned package: an hour


def pages() -> list[Page]:
    """What the gateway serves itself, to anyone (no token): the API document and its reference
    page, with the page's assets from the pinned swagger-ui-dist package (no CDN)."""
    return [Page("/openapi.json", OPENAPI, "application/json"),
            Page("/docs", DOCS / "index.html", "text/html; charset=utf-8"),
            Page("/docs/reference.js", DOCS / "reference.js", "text/javascript; charset=utf-8"),
            Page("/docs/swagger-ui.css", SWAGGER_UI / "swagger-ui.css", "text/css; charset=utf-8",
                 "public, max-age=3600"),
            Page("/docs/swagger-ui-bundle.js", SWAGGER_UI / "swagger-ui-bundle.js", "text/javascript; charset=utf-8",
                 "public, max-age=3600")]


# The reference page runs only its own scripts; Swagger UI sets inline styles and data: images.
_PAGE_POLICY = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _page_match(page: Page) -> dict:
    return {"path": page.path, "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]}


def _page_route(page: Page) -> dict:
    return {"match": _page_match(page),
            "direct_response": {"status": 200, "body": {"filename": str(page.file)}},
            # The transcoder would answer 404 for a path that no RPC binds (reject_unknown_method).
            "typed_per_filter_config": {"envoy.filters.http.grpc_json_transcoder": {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}},
            "response_headers_to_add": [
                {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                for key, value in (("content-type", page.content_type), ("cache-control", page.cache),
                                   ("x-content-type-options", "nosniff"),
                                   ("content-security-policy", _PAGE_POLICY))]}


def _route(rpc: Rpc, timeout: float) -> dict:
    # A stream has no gateway timeout: the service ends it (WatchTransaction within 300 s, with
    # its last message), before its idle timeout would (Envoy's default is those same 300 s).
    route = {"cluster": rpc.service, "timeout": "0s" if rpc.streams else f"{timeout:g}s"}
    if rpc.streams:
        route["idle_timeout"] = f"{STREAM_IDLE_SECONDS}s"
    if rpc.read:    # idempotent: safe to try again on another connection
        route["retry_policy"] = {"retry_on": "connect-failure,refused-stream,unavailable,reset",
                                 "num_retries": 2, "per_try_timeout": f"{max(timeout / 3, 1):g}s"}
    return {"match": {"path": rpc.path}, "route": route}


ACCESS_LOG = {
    "time": "%START_TIME%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "rpc": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%", "grpc_status": "%GRPC_STATUS%",
    "grpc_code": "%GRPC_STATUS_NUMBER%",
    "flags": "%RESPONSE_FLAGS%", "details": "%RESPONSE_CODE_DETAILS%", "duration_ms": "%DURATION%", "upstream": "%UPSTREAM_CLUSTER%",
    "request_id": "%REQ(X-REQUEST-ID)%", "trace_id": "%TRACE_ID%", "traceparent": "%REQ(TRACEPARENT)%", "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%", "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
}


def _collector_cluster(port: int) -> dict:
    return {"name": "span_collector", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "span_collector", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPED}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}}


def _server_tls(topology: Topology) -> dict:
    """HTTPS for external clients, with the gateway's certificate (trusted through the mesh CA)."""
    name = topology.gateway.name
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": f"{_TYPED}.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": str(topology.certs_dir / f"{name}.crt")},
                                  "private_key": {"filename": str(topology.certs_dir / f"{name}.key")}}]}}}


def _listener(name: str, address, manager: dict, tls: dict | None = None) -> dict:
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
    if tls:
        chain["transport_socket"] = tls
    return {"name": name, "address": {"socket_address": {"address": address.host, "port_value": address.port}},
            "filter_chains": [chain]}


def _jwt_authn(name: str, topology: Topology, required: bool) -> dict:
    """User JWTs (ES256 keys from jwks.json). Required, a missing or invalid token is 401. Not
    required (the first pass, before the rate limit), it only records a verified token's claims
    in the dynamic metadata, where no request header can forge them."""
    provider = {"issuer": ISSUER, "audiences": [AUDIENCE],
                "local_jwks": {"filename": str(topology.certs_dir / "jwks.json")},
                "from_headers": BEARER_HEADERS,
                "forward": True,                 # the services verify it again and act for its user
                "jwt_cache_config": {"jwt_cache_size": 4096}}   # a verified token is not verified again
    config = {"@type": f"{_TYPED}.filters.http.jwt_authn.v3.JwtAuthentication", "providers": {"users": provider}}
    rules = []
    if required:
        requires = {"provider_name": "users"}
        rules = [{"match": _page_match(page)} for page in pages()]         # no requirement: public
    else:
        provider["payload_in_metadata"] = "user"
        requires = {"requires_any": {"requirements": [{"provider_name": "users"}, {"allow_missing_or_failed": {}}]}}
        config["stat_prefix"] = "identify."      # its counters apart: it lets everything through
    rules.append({"match": {"prefix": "/"}, "requires": requires})
    return {"name": name, "typed_config": {**config, "rules": rules}}


def _grpc_status(step: str, header: dict, remove: str | None = None) -> dict:
    """One half of carrying an error's gRPC status across the transcoder. Answers pass the
    filters in reverse order: "keep" (after the transcoder) sees the service's answer, "restore"
    (before it) the transcoded one. A header whose value comes out empty is not added."""
    mutations = [{"append": {"header": header, "append_action": "ADD_IF_ABSENT"}}]
    if remove:
        mutations.append({"remove": remove})
    return {"name": f"diboas.grpc_status.{step}", "typed_config": {
        "@type": f"{_TYPED}.filters.http.header_mutation.v3.HeaderMutation",
        "mutations": {"response_mutations": mutations}}}


def _rate_limit(g: GatewayConfig) -> dict:
    """A token bucket per user (the verified token's `sub`, one of the last rate_limit_users
    users), and one shared by every request without a valid token: a flood of those, or one
    user's, spends its own budget and nobody else's."""
    per_user = {"max_tokens": g.rate_limit_burst, "tokens_per_fill": g.rate_limit_per_second, "fill_interval": "1s"}
    anonymous = {"max_tokens": g.anonymous_rate_limit_burst, "tokens_per_fill": g.anonymous_rate_limit_per_second,
                 "fill_interval": "1s"}
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": f"{_TYPED}.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "gateway_rate_limit",
        # The descriptor ("user", sub) exists only for a verified token; its empty value makes a
        # bucket per distinct sub. A request without one takes the default bucket: the anonymous.
        "rate_limits": [{"actions": [{"metadata": {
            "descriptor_key": "user", "source": "DYNAMIC",
            "metadata_key": {"key": _JWT_METADATA, "path": [{"key": "user"}, {"key": "sub"}]}}}]}],
        "descriptors": [{"entries": [{"key": "user", "value": ""}], "token_bucket": per_user}],
        "max_dynamic_descriptors": g.rate_limit_users,
        "token_bucket": anonymous,
        "always_consume_default_token_bucket": False,
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                           "runtime_key": "diboas.rate_limit_enabled"},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                            "runtime_key": "diboas.rate_limit_enforced"},
        "response_headers_to_add": [{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                     "header": {"key": "x-diboas-rate-limited", "value": "true"}}]}}


def render(topology: Topology, access_log: Path, descriptors: Path = DESCRIPTORS,
           collector_port: int | None = None) -> dict:
    """The whole Envoy bootstrap, as a dict (written out as JSON). With a collector port, Envoy
    records a span per request (W3C trace context in and out) and exports it there over OTLP."""
    g, rpcs = topology.gateway, external_rpcs(topology, descriptors)
    services = sorted({r.grpc_service for r in rpcs})
    filters = [
        _jwt_authn("envoy.filters.http.jwt_authn.identify", topology, required=False),
        _rate_limit(g),
        _jwt_authn("envoy.filters.http.jwt_authn", topology, required=True),
        {"name": "envoy.filters.http.buffer", "typed_config": {
            "@type": f"{_TYPED}.filters.http.buffer.v3.Buffer", "max_request_bytes": g.max_request_bytes}},
        _grpc_status("restore", {"key": "grpc-status", "value": f"%RESP({_KEPT_GRPC_STATUS})%"},
                     remove=_KEPT_GRPC_STATUS),
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": {
            "@type": f"{_TYPED}.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(descriptors),
            "services": services,
            "convert_grpc_status": True,
            "print_options": {"add_whitespace": False, "always_print_primitive_fields": True,
                              "always_print_enums_as_ints": False, "preserve_proto_field_names": False},
            "request_validation_options": {"reject_unknown_method": True, "reject_unknown_query_parameters": True,
                                           "reject_binding_body_field_collisions": True},
            "case_insensitive_enum_parsing": False}},
        _grpc_status("keep", {"key": _KEPT_GRPC_STATUS, "value": "%RESP(grpc-status)%"}),
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": f"{_TYPED}.filters.http.router.v3.Router"}},
    ]
    manager = {
        "@type": f"{_TYPED}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        "request_timeout": f"{g.request_timeout_seconds:g}s",
        "max_request_headers_kb": MAX_REQUEST_HEADERS_KB,
        "common_http_protocol_options": {"idle_timeout": "60s", "max_headers_count": MAX_HEADERS},
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": f"{_TYPED}.access_loggers.file.v3.FileAccessLog", "path": str(access_log),
            "log_format": {"json_format": ACCESS_LOG}}}],
        "route_config": {"name": "rest", "virtual_hosts": [{
            "name": "diboas", "domains": ["*"],
            "routes": [_page_route(page) for page in pages()] + [_route(r, g.request_timeout_seconds) for r in rpcs]}],
            "max_direct_response_body_size_bytes": max(page.file.stat().st_size for page in pages())},
        "http_filters": filters,
        **({"tracing": {
            "random_sampling": {"value": topology.observability.trace_sample_ratio * 100},
            "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": "span_collector"}, "timeout": "1s"},
                "service_name": topology.gateway.name}}}} if collector_port else {}),
        "local_reply_config": {"mappers": [
            # QUERY without a content type is refused by Envoy's HTTP codec, which gives no text.
            _json_reply(400, 3, "no such REST route: QUERY %REQ(:PATH)% (%RESPONSE_CODE_DETAILS%)", method="QUERY"),
            _json_reply(400, 3, "%LOCAL_REPLY_BODY%"),
            _json_reply(401, 16, "%LOCAL_REPLY_BODY%"),
            _json_reply(403, 7, "%LOCAL_REPLY_BODY%"),
            _json_reply(404, 5, "no such REST route: %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
            _json_reply(413, 3, f"the request body is larger than {g.max_request_bytes} bytes"),
            _json_reply(429, 8, "rate limit exceeded: slow down and retry"),
            _json_reply(431, 3, f"the URL and headers are larger than {MAX_REQUEST_HEADERS_KB} KiB"),
            _json_reply(408, 4, "the request did not arrive within the gateway's request timeout"),
            _json_reply(500, 13, "%LOCAL_REPLY_BODY%"),
            _json_reply(502, 14, "%LOCAL_REPLY_BODY%"),
            _json_reply(503, 14, "%LOCAL_REPLY_BODY%"),
            _json_reply(504, 4, "%LOCAL_REPLY_BODY%"),
        ]},
    }
    return {
        "node": {"id": "diboas-gateway", "cluster": "diboas"},
        "admin": {"address": {"socket_address": {"address": g.admin.host, "port_value": g.admin.port}}},
        "static_resources": {
            "listeners": [_listener("rest", g.http, manager),
                          _listener("rest_tls", g.https, manager, _server_tls(topology))],
            "clusters": [_cluster(topology, name) for name in sorted({r.service for r in rpcs})]
                        + ([_collector_cluster(collector_port)] if collector_port else []),
        },
    }
