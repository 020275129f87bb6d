"""A servicer under grpc_testing: its real generated service descriptor, no network, no guard.

grpc_testing serves synchronous servicers, each call in a thread of its own; ours are
coroutines, so each call runs its coroutine to the end in a new event loop in that thread,
inside the call context the server guard would set (services/runtime/context.py: the caller,
the external user, the absolute deadline).

Domain errors: the server guard (services/runtime/guard.py) is not in play here, and grpc_testing
would turn a servicer's domain error into UNKNOWN. The harness therefore maps it as the guard
does, with the project's own mapping (services.runtime.status.to_rpc_status): the status code and
message, and the google.rpc details (ErrorInfo reason, BadRequest field violations) in the
trailing metadata. Tests read them back as a client would (`refusal`, `misnamed`). Any other
exception stays UNKNOWN (the guard would make it INTERNAL), so a test can tell the two apart.

What a servicer is built on is faked by hand in its test module (the service layer, a registry,
a coordinator), recording what it is asked (`Recorder`) and answering domain values or raising
domain errors. The event sink and the dead letter service are built on a Database itself:
`FakeDatabase` stands in for it.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import grpc
import grpc_testing
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2

from services.domain.errors import DomainError
from services.runtime.context import CURRENT_CALL, CallInfo
from services.runtime.status import to_rpc_status

DOMAIN = "servicer-under-test.diboas.local"


@dataclass(frozen=True)
class Refusal:
    """How a call ended, as its client sees it."""

    code: grpc.StatusCode
    message: str
    reason: str                                              # ErrorInfo.reason
    fields: dict[str, str] = field(default_factory=dict)    # BadRequest: field -> description


class Served:
    """One servicer behind grpc_testing. `caller`, `user` and `timeout` (seconds to the call's
    deadline) are what the guard would have established for the calls that follow."""

    def __init__(self, service: ServiceDescriptor, servicer, *, caller: str = "transaction", user=None,
                 timeout: float = 10.0):
        self._service = service
        self._server = grpc_testing.server_from_dictionary({service: _Synchronous(servicer, self)},
                                                           grpc_testing.strict_real_time())
        self.caller, self.user, self.timeout = caller, user, timeout

    def _termination(self, method: str, request):
        rpc = self._server.invoke_unary_unary(self._service.methods_by_name[method], (), request, self.timeout)
        return rpc.termination()

    def call(self, method: str, request):
        """The response of a call that must succeed."""
        response, _, code, details = self._termination(method, request)
        assert code is grpc.StatusCode.OK, f"{method} failed: {code.name} {details}"
        return response

    def refusal(self, method: str, request) -> Refusal:
        """How a call that must fail was refused."""
        refused = self._outcome(method, request)
        assert refused.code is not grpc.StatusCode.OK, f"{method} succeeded"
        return refused

    def misnamed(self, cases: dict[str, tuple[str, object, str]]) -> dict[str, str]:
        """Of `cases` (a method, a request, the one field it must be refused for), those whose call
        was not INVALID_ARGUMENT naming exactly that field, with what happened; {} when none."""
        wrong = {}
        for case, (method, request, named) in cases.items():
            outcome = self._outcome(method, request)
            if outcome.code is not grpc.StatusCode.INVALID_ARGUMENT or list(outcome.fields) != [named]:
                wrong[case] = f"{outcome.code.name} naming {sorted(outcome.fields)}: {outcome.message}"
        return wrong

    def _outcome(self, method: str, request) -> Refusal:
        _, trailing, code, details = self._termination(method, request)
        status = status_pb2.Status.FromString(dict(trailing).get("grpc-status-details-bin", b""))
        return refusal_in(status, code, details)

    async def _serve(self, behaviour, request, context):
        CURRENT_CALL.set(CallInfo(self.caller, time.monotonic() + self.timeout, self.user))
        try:
            return await behaviour(request, context)
        except DomainError as error:
            status = to_rpc_status(error, DOMAIN)
            context.set_code(status.code)
            context.set_details(status.details)
            context.set_trailing_metadata(status.trailing_metadata)
            return None                  # grpc_testing ends the call with the code and trailers set


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def refusal_in(status: status_pb2.Status, code: grpc.StatusCode | None = None, message: str | None = None) -> Refusal:
    """The Refusal a google.rpc.Status stands for: of a call (its code and message given), or one
    outcome of a batch (code 0: OK)."""
    reason, fields = "", {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.update((v.field, v.description) for v in bad.field_violations)
    return Refusal(code or _CODES[status.code], status.message if message is None else message, reason, fields)


class _Synchronous:
    """The servicer as grpc_testing calls it: each method runs its coroutine to the end."""

    def __init__(self, servicer, served: Served):
        self._servicer, self._served = servicer, served

    def __getattr__(self, name: str):
        behaviour = getattr(self._servicer, name)
        return lambda request, context: asyncio.run(self._served._serve(behaviour, request, context))


class Recorder:
    """What a fake was asked: each call's name and arguments, in order. `failure`, when set, is
    raised by the next call (a domain error of the faked service)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.failure: Exception | None = None

    def record(self, called: str, /, **arguments) -> None:
        self.calls.append((called, arguments))
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def last(self, name: str) -> dict:
        """The arguments of the latest call of `name`."""
        return next(arguments for called, arguments in reversed(self.calls) if called == name)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeDatabase:
    """services.runtime.db.Database without a database, for the servicers built on one (the event
    sink, the dead letter service): `run` runs the work at once; in a transaction every query
    finds `found` (None: nothing), and every other statement is kept in `written` (unless the
    transaction fails: then it is rolled back)."""

    def __init__(self, found=None):
        self.found = found
        self.written: list = []

    async def run(self, fn, *args):
        return fn(*args)

    @contextlib.contextmanager
    def transaction(self):
        kept = len(self.written)
        try:
            yield _Connection(self)
        except BaseException:
            del self.written[kept:]         # rolled back
            raise

    def after_commit(self, callback):
        callback()


class _Connection:
    def __init__(self, db: FakeDatabase):
        self._db = db

    def execute(self, statement, values=None):
        if statement.is_select:
            return _Result(self._db.found)
        # A statement built once is run with its values: kept with them bound, as if built per call.
        self._db.written.append(statement.values(**values) if isinstance(values, dict) and statement.is_insert
                                else statement)
        return _Result(None)


@dataclass
class _Result:
    row: object

    def first(self):
        return self.row
