"""The transport edge: reading requests (resource names, idempotency keys, money, the
fingerprint a repeated request is compared by; every problem names its field) and the small
conversions responses share."""
from __future__ import annotations

import datetime as dt
import hashlib
import re

from google.protobuf.timestamp_pb2 import Timestamp

from services.domain.money import Money

from .context import current_user
from .errors import InvalidArgument

_ID = r"[A-Za-z0-9_-]{1,64}"


def resource_id(name: str, collection: str, field: str) -> str:
    """'abc' from 'wallets/abc' (collection "wallets"); INVALID_ARGUMENT naming `field` otherwise."""
    match = re.fullmatch(rf"{collection}/({_ID})", name)
    if not match:
        raise InvalidArgument.field(field, f"'{name}' is not a name like \"{collection}/{{id}}\"")
    return match.group(1)


MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 500, 50


def page_size(requested: int) -> int:
    """How many items a list returns: the default for 0, at most the maximum; negative is refused."""
    if requested < 0:
        raise InvalidArgument.field("page_size", f"must not be negative, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def request_id(request) -> str:
    """The idempotency key of a request. An external user's keys are their own: the same key
    from another user is another request (it neither gets nor blocks theirs), and cannot meet
    the keys the services use among themselves."""
    value = request.request_id
    if not value or len(value) > 128:
        raise InvalidArgument.field("request_id", "is required: a unique key of up to 128 characters per request")
    user = current_user()
    if user is not None:
        return "user:" + hashlib.sha256(f"{user.id}\0{value}".encode()).hexdigest()
    return value


def fingerprint(request) -> str:
    """What the request asks for, without its request_id: a repeat must ask for the same."""
    body = type(request)()
    body.CopyFrom(request)
    body.request_id = ""
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


def money(message, present: bool, field: str) -> Money:
    """A positive amount from a diboas.common.v1.Money field."""
    if not present:
        raise InvalidArgument.field(field, "is required")
    return Money.parse(message.currency_code, message.amount, field=f"{field}.amount",
                       currency_field=f"{field}.currency_code").require_positive(f"{field}.amount")


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    """A protobuf Timestamp (None stays None: the field is left unset)."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp
