"""Domain errors: what went wrong, in words a caller can act on.

Domain, service-layer and runtime code all raise these; this module is pure Python (no grpc,
no protobuf, no SQL), so the domain needs nothing from the runtime to raise them. The transport
maps each class to its canonical gRPC code (services/runtime/status.py), with a stable
UPPER_SNAKE reason (google.rpc.ErrorInfo) and, for bad input, the offending fields (BadRequest).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every error a caller is meant to see; `reason` is stable, `message` is for people."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, violations: list[FieldViolation] | None = None, **kw):
        super().__init__(message, **kw)
        self.violations = list(violations or [])

    @classmethod
    def field(cls, field: str, description: str, **kw) -> "InvalidArgument":
        return cls(f"{field}: {description}", violations=[FieldViolation(field, description)], **kw)


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class ServiceUnavailable(DomainError):
    """An upstream (a service, a provider, a chain) cannot be reached now; retrying later may work."""

    reason = "SERVICE_UNAVAILABLE"


class ResourceExhausted(DomainError):
    """The service has more work in hand than it takes on: the request was refused before
    anything was written, and the same request may be sent again after `retry_after_seconds`."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_seconds: int, **kw):
        super().__init__(message, **kw)
        self.retry_after_seconds = retry_after_seconds


class DeadlineExceeded(DomainError):
    reason = "DEADLINE_EXCEEDED"


class Unimplemented(DomainError):
    """The operation is in the contract but not served by this server; the message says which
    operation and why."""

    reason = "NOT_IMPLEMENTED_YET"


class Internal(DomainError):
    """Something inside the mesh is wrong (a misconfiguration between services, a bug); the
    caller can do nothing about it. The message must not expose internals."""

    reason = "INTERNAL"
