"""Protobuf <-> domain conversions of the shared types (diboas.common.v1.Money, Timestamp,
Duration): the one place their wire forms are written and read."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from diboas.common.v1 import common_pb2
from services.domain.money import Money


def money_pb(value: Money) -> common_pb2.Money:
    """The wire form of an amount: fixed-point at the currency's scale ("12.50")."""
    return common_pb2.Money(currency_code=value.currency, amount=value.text)


def amount_pb(currency: str, amount: Decimal) -> common_pb2.Money:
    """The wire form of an amount as configured (a limit such as a provider's minimum), not
    rounded to the currency's scale."""
    return common_pb2.Money(currency_code=currency, amount=f"{amount:f}")


def money_of(message: common_pb2.Money, field: str) -> Money:
    """Money from a diboas.common.v1.Money field; InvalidArgument naming `field`.amount or
    `field`.currency_code when anything is off."""
    return Money.parse(message.currency_code, message.amount, field=f"{field}.amount",
                       currency_field=f"{field}.currency_code")


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    """A protobuf Timestamp (None stays None: the field is left unset)."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def datetime_of(stamp: Timestamp) -> dt.datetime:
    """A protobuf Timestamp as an aware datetime in UTC."""
    return stamp.ToDatetime(tzinfo=dt.timezone.utc)


def timestamp_text(stamp: Timestamp) -> str:
    """A protobuf Timestamp as RFC 3339 text ("2026-03-01T10:30:15Z"), as its JSON form."""
    return stamp.ToJsonString()


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromTimedelta(dt.timedelta(seconds=seconds))
    return value


def seconds_of(value: Duration) -> float:
    return value.ToTimedelta().total_seconds()
