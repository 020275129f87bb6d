"""The transport edge: reading requests (resource names, page tokens, idempotency keys, money,
the fingerprint a repeated request is compared by; every problem names its field). The wire
forms of shared types (Money, Timestamp, Duration) are in services.runtime.wire."""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from typing import Any, Callable, NamedTuple

from services.domain.errors import InvalidArgument
from services.domain.money import Money

from .context import current_user
from .wire import money_of

_ID = r"[A-Za-z0-9_-]{1,64}"
ID_PATTERN = f"^{_ID}$"         # an id (the last segment of a resource name), as the OpenAPI document states it
MAX_REQUEST_ID = 128            # characters of an idempotency key


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


def foreign_page_token() -> InvalidArgument:
    """The refusal of a page token that the list did not give out."""
    return InvalidArgument.field("page_token", "is not a page token this list gave out; send the next_page_token "
                                               "of the previous page, or nothing for the first page")


class TokenPart(NamedTuple):
    """One value of a page token: how it is written, and how it is read back (None: not one of ours)."""

    write: Callable[[Any], str]
    read: Callable[[str], Any]


def _read_key(text: str) -> str | None:
    return text if re.fullmatch(_ID, text) else None


MAX_SEQUENCE = 2**31 - 1          # the largest id of an Integer column (INTEGER on PostgreSQL)


def _read_sequence(text: str) -> int | None:
    # ASCII digits only (int() would take "٣" or " 3"), and within the column's range.
    return int(text) if re.fullmatch(r"[0-9]{1,10}", text) and int(text) <= MAX_SEQUENCE else None


def _read_instant(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.utcoffset() == dt.timedelta(0) else None


KEY = TokenPart(str, _read_key)                        # an id, as in resource names
SEQUENCE = TokenPart(str, _read_sequence)              # an Integer row id, never negative
INSTANT = TokenPart(dt.datetime.isoformat, _read_instant)   # a UTC time


class PageTokens:
    """The page tokens of one list: its kind and the values a page resumes after, opaque to callers.

    A token is the unpadded URL-safe base64 of "kind|value|...". Reading is strict: a token is
    accepted only if writing what it holds gives the very same token, so a token is either one
    this list gave out (or could have) or INVALID_ARGUMENT naming page_token, never anything a
    database or parser would choke on (over-long numbers, non-ASCII digits, NUL ...)."""

    MAX_LENGTH = 512

    def __init__(self, kind: str, *parts: TokenPart):
        self.kind, self.parts = kind, parts

    def write(self, *values) -> str:
        text = "|".join([self.kind, *(part.write(v) for part, v in zip(self.parts, values, strict=True))])
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def read(self, token: str) -> tuple | None:
        """The values of `token`, None for the empty token (the first page)."""
        if not token:
            return None
        if len(token) > self.MAX_LENGTH or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
            raise foreign_page_token()
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            raise foreign_page_token() from None
        kind, *texts = text.split("|")
        if kind != self.kind or len(texts) != len(self.parts):
            raise foreign_page_token()
        values = tuple(part.read(t) for part, t in zip(self.parts, texts, strict=True))
        if None in values or self.write(*values) != token:
            raise foreign_page_token()
        return values


USER_KEYS = "user:"     # the prefix of an external user's keys, as stored (never shown)


def request_id(request) -> str:
    """The idempotency key of a request. An external user's keys are their own: the same key
    from another user is another request (it neither gets nor blocks theirs), and cannot meet
    the keys the services use among themselves."""
    value = request.request_id
    if not value or len(value) > MAX_REQUEST_ID:
        raise InvalidArgument.field("request_id", f"is required: a unique key of up to {MAX_REQUEST_ID} characters "
                                                  "per request")
    user = current_user()
    if user is not None:
        return USER_KEYS + hashlib.sha256(f"{user.id}\0{value}".encode()).hexdigest()
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
    return money_of(message, field).require_positive(f"{field}.amount")
