"""Domain errors to canonical gRPC codes with google.rpc.Status details, and back.

Servers: `to_rpc_status(error, domain)` packs ErrorInfo (stable reason) and, for bad input,
BadRequest field violations (`status_message` is the same google.rpc.Status, for an answer that
carries one per item: `answer_each` answers the requests of a batch RPC so). Clients:
`from_rpc_error(error, upstream)` turns an upstream's AioRpcError back into the domain error
(`from_status_message` a Status inside an answer), so domain code never sees grpc types.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.domain import errors

log = logging.getLogger("diboas.rpc")

CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ServiceUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}
# An upstream's RESOURCE_EXHAUSTED may be gRPC's own (a message or metadata too large): to our
# caller it is the upstream failing, like INTERNAL (upstream_error).
_ERRORS_BY_CODE = {code: cls for cls, code in CODES.items() if cls is not errors.ResourceExhausted}


def code_of(error: errors.DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.UNKNOWN


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# Messages quote what was wrong, and a caller's value can be as long as its request. The status
# travels in the trailers (grpc-message, and again in grpc-status-details-bin, base64): a long
# quote would make them larger than a peer accepts (Envoy refuses response headers beyond
# 60 KiB and answers 503), so each text is cut to this many characters.
MAX_TEXT = 512


def bounded(text: str) -> str:
    """`text`, or its first MAX_TEXT characters and how many more there were."""
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... ({len(text) - MAX_TEXT} more characters)"


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple


def error_domain(service: str, trust_domain: str) -> str:
    """The `domain` of the ErrorInfo a service's errors carry, e.g. "wallet.diboas.local"."""
    return f"{service}.{trust_domain}"


def status_message(error: errors.DomainError, domain: str) -> status_pb2.Status:
    """The google.rpc.Status of a domain error: its code, its message and the details (ErrorInfo
    with the stable reason; BadRequest for bad input; RetryInfo when the caller should wait)."""
    code = code_of(error)
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata))]
    if isinstance(error, errors.InvalidArgument) and error.violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=bounded(v.description))
            for v in error.violations
        ])))
    retry_after = getattr(error, "retry_after_seconds", None)
    if retry_after is not None:
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))))
    return status_pb2.Status(code=code.value[0], message=bounded(error.message), details=details)


R = TypeVar("R")
A = TypeVar("A")


async def answer_each(requests: Sequence[R], handle: Callable[[R], Awaitable[A]], domain: str, *,
                      most: int, field: str = "requests") -> list[tuple[status_pb2.Status, A | None]]:
    """The requests of a batch RPC, 1 to `most` of them (else InvalidArgument naming `field`),
    each handled on its own and all at once: (OK, its answer), or (the status the request alone
    would have got, None). An unexpected failure is logged with its traceback and answered
    INTERNAL, as the server guard answers it, without failing the others."""
    if not 1 <= len(requests) <= most:
        raise errors.InvalidArgument.field(field, f"give 1 to {most} {field}, not {len(requests)}")

    async def one(index: int, request: R) -> tuple[status_pb2.Status, A | None]:
        try:
            return status_pb2.Status(), await handle(request)
        except errors.DomainError as error:
            return status_message(error, domain), None
        except Exception:  # noqa: BLE001 - one request's bug must not fail the others' answers
            log.exception("%s[%d] of a batch failed (%s)", field, index, getattr(handle, "__qualname__", handle))
            return status_message(errors.Internal(f"{field}[{index}] failed", reason="INTERNAL"), domain), None
    return list(await asyncio.gather(*(one(i, request) for i, request in enumerate(requests))))


def to_rpc_status(error: errors.DomainError, domain: str) -> grpc.Status:
    status = rpc_status.to_status(status_message(error, domain))
    retry_after = getattr(error, "retry_after_seconds", None)
    if retry_after is None:
        return status
    # Also as HTTP's header, which the gateway passes on with the 429.
    return _Status(status.code, status.details, (*status.trailing_metadata, ("retry-after", str(retry_after))))


def internal_status(message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if the server sent one."""
    return _info_in(rpc_status.from_call(error))


def _info_in(status: status_pb2.Status | None) -> error_details_pb2.ErrorInfo | None:
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


# An upstream refusing *this service* is a fault inside the mesh, not something the end
# caller did: it must not reach them as their own 401/403, nor show internal names.
_REFUSALS = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def from_rpc_error(error: grpc.aio.AioRpcError, upstream: str, *, mask_refusals: bool = True) -> errors.DomainError:
    """The domain error an upstream's failure stands for (UNAVAILABLE -> ServiceUnavailable ...);
    `mask_refusals` as in `upstream_error`."""
    info = error_info(error)
    return upstream_error(error.code(), error.details(), info.reason if info else None, upstream,
                          mask_refusals=mask_refusals)


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def from_status_message(status: status_pb2.Status, upstream: str) -> errors.DomainError:
    """The domain error an upstream's google.rpc.Status stands for when it comes inside an answer
    (one outcome of a batch), as `from_rpc_error` makes it of a failed call."""
    info = _info_in(status)
    return upstream_error(_CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN), status.message,
                          info.reason if info else None, upstream)


def upstream_error(code: grpc.StatusCode, details: str | None, reason: str | None, upstream: str, *,
                   mask_refusals: bool = True) -> errors.DomainError:
    """What a caller sees of an upstream's failure with `code`, whether the upstream answered over
    the network or in the same process (services/runtime/local.py): the same class, message and
    reason either way. A service masks an upstream's refusal of its own call (INTERNAL, logged);
    a client program (services/meshclient) has no caller to hide it from: with `mask_refusals`
    off, UNAUTHENTICATED and PERMISSION_DENIED reach it as themselves, with the upstream's reason."""
    if code in _REFUSALS and mask_refusals:
        log.error("%s refused our call: %s %s (reason %s)", upstream, code.name, details, reason or "-")
        result: errors.DomainError = errors.Internal(f"an internal call to {upstream} was refused",
                                                     reason="UPSTREAM_REFUSED")
    else:
        cls = _ERRORS_BY_CODE.get(code)
        reason = reason or code.name
        message = f"{upstream}: {details or code.name}"
        if cls is None or cls is errors.Internal:
            # INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED ...: the upstream failed; to our caller it is unavailable.
            cls, reason = errors.ServiceUnavailable, f"UPSTREAM_{code.name}"
        # The upstream's metadata describes its internals; only its stable reason travels on.
        result = cls(message, reason=reason)
    result.upstream_code = code
    return result
