"""Reading requests at the transport edge: resource names, idempotency keys, money, and the
fingerprint a repeated request is compared by. Every problem names the field it is in."""
from __future__ import annotations

import hashlib
import re

from services.domain.money import Money

from .errors import InvalidArgument

_ID = r"[A-Za-z0-9_-]{1,64}"


def resource_id(name: str, collection: str, field: str) -> str:
    """'abc' from 'wallets/abc' (collection "wallets"); INVALID_ARGUMENT naming `field` otherwise."""
    match = re.fullmatch(rf"{collection}/({_ID})", name)
    if not match:
        raise InvalidArgument.field(field, f"'{name}' is not a name like \"{collection}/{{id}}\"")
    return match.group(1)


def request_id(request) -> str:
    value = request.request_id
    if not value or len(value) > 128:
        raise InvalidArgument.field("request_id", "is required: a unique key of up to 128 characters per request")
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
