"""Idempotent operations (AIP-155), for every service's database.

The first response of each request_id is stored, with a fingerprint of the request, in the same
transaction as the effect; a repeat returns it verbatim and changes nothing; the same key with
another request (or operation) is ALREADY_EXISTS. Failed requests are not stored.
"""
from __future__ import annotations

import datetime as dt
import functools
from typing import Callable, TypeVar

from sqlalchemy import Column, Connection, DateTime, LargeBinary, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from services.domain.errors import AlreadyExists

from .db import Database, param
from .prepared import Prepared
from .requests import USER_KEYS

T = TypeVar("T")


def idempotency_table(metadata: MetaData) -> Table:
    return Table(
        "idempotency_keys", metadata,
        Column("request_id", String(128), primary_key=True),
        Column("operation", String(64), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("response", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )


@functools.cache
def _lookup(table: Table) -> Prepared:
    return Prepared(select(table).where(table.c.request_id == param(table.c.request_id, "request_id")))


@functools.cache
def _store(table: Table) -> Prepared:
    return Prepared(insert(table))


def stored_response(connection: Connection, table: Table, operation: str, request_id: str,
                    fingerprint: str) -> bytes | None:
    """The first response of `request_id`, if there was one; ALREADY_EXISTS if it was for another request."""
    row = _lookup(table).run(connection, {"request_id": request_id}).first()
    if row is None:
        return None
    if (row.operation, row.fingerprint) != (operation, fingerprint):
        # A user's key is stored hashed with their id: quoting it would show an internal value.
        shown = "this request_id" if request_id.startswith(USER_KEYS) else f"request_id '{request_id}'"
        raise AlreadyExists(f"{shown} was already used for a different request "
                            f"({row.operation}); use a new request_id for a new request", reason="REQUEST_ID_REUSED")
    return bytes(row.response)


def respond_once(connection: Connection, table: Table, operation: str, request_id: str, fingerprint: str,
                 now: dt.datetime, respond: Callable[[], bytes]) -> bytes:
    """Inside the caller's transaction: the stored response of `request_id`, or else `respond()`'s,
    stored with the fingerprint (so it commits with the effect, or not at all)."""
    stored = stored_response(connection, table, operation, request_id, fingerprint)
    if stored is not None:
        return stored
    response = respond()
    _store(table).run(connection, {"request_id": request_id, "operation": operation, "fingerprint": fingerprint,
                                   "response": response, "created_at": now})
    return response


def again_on_conflict(attempt: Callable[[], T]) -> T:
    """Run a transaction `attempt`; once more if a concurrent one committed first (same
    request_id, or another unique key), to see what it left."""
    try:
        return attempt()
    except IntegrityError:
        return attempt()


def run_idempotent(db: Database, table: Table, operation: str, request_id: str, fingerprint: str,
                   work: Callable[[Connection, dt.datetime], T], encode: Callable[[T], bytes],
                   clock: Callable[[], dt.datetime]) -> bytes:
    """Run `work` in one transaction unless `request_id` was seen; the (stored) response bytes."""
    def attempt() -> bytes:
        with db.transaction() as connection:
            now = clock()
            return respond_once(connection, table, operation, request_id, fingerprint, now,
                                lambda: encode(work(connection, now)))
    return again_on_conflict(attempt)
