"""The wire forms of the shared types (Money, Timestamp, Duration), written and read in one
module (services/runtime/wire.py), and the one clock (services/domain/clock.py): the forms are
exact, and no other module of the services converts them or reads the time its own way (read
from the syntax trees)."""
from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from diboas.common.v1 import common_pb2
from services.domain.clock import utcnow
from services.domain.errors import InvalidArgument
from services.domain.money import Money
from services.runtime.wire import datetime_of, duration, money_of, money_pb, seconds_of, timestamp, timestamp_text

SERVICES = Path(__file__).resolve().parents[2] / "services"


@pytest.mark.parametrize("currency,text,wire", [
    ("USD", "12.5", "12.50"), ("USD", "0", "0.00"), ("BTC", "0.00000001", "0.00000001"),
    ("USDC", "3", "3.000000"), ("ETH", "1.000000000000000001", "1.000000000000000001"),
])
def test_money_is_written_at_the_currency_scale_and_read_back_exactly(currency, text, wire):
    value = Money.parse(currency, text)
    written = money_pb(value)
    assert written.SerializeToString() == common_pb2.Money(currency_code=currency, amount=wire).SerializeToString()
    assert money_of(written, "amount") == value


@pytest.mark.parametrize("message,field", [
    (common_pb2.Money(currency_code="USD", amount="1.234"), "hold.amount.amount"),
    (common_pb2.Money(currency_code="USD", amount="ten"), "hold.amount.amount"),
    (common_pb2.Money(currency_code="XYZ", amount="1"), "hold.amount.currency_code"),
])
def test_bad_money_is_refused_naming_the_field(message, field):
    with pytest.raises(InvalidArgument) as refused:
        money_of(message, "hold.amount")
    assert [v.field for v in refused.value.violations] == [field]


def test_a_timestamp_keeps_the_instant_and_none_leaves_the_field_unset():
    at = dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    stamp = timestamp(at)
    assert stamp.SerializeToString() == Timestamp(seconds=int(at.timestamp()), nanos=123456000).SerializeToString()
    assert datetime_of(stamp) == at and datetime_of(stamp).tzinfo == dt.timezone.utc
    assert timestamp(None) is None
    assert timestamp_text(timestamp(at)) == "2026-03-01T10:30:15.123456Z"


def test_a_duration_keeps_its_seconds():
    assert duration(1.5).SerializeToString() == Duration(seconds=1, nanos=500_000_000).SerializeToString()
    assert seconds_of(duration(0.25)) == 0.25
    assert duration(1234 / 1000).SerializeToString() == Duration(seconds=1, nanos=234_000_000).SerializeToString()


def test_the_clock_is_aware_utc():
    before = dt.datetime.now(dt.timezone.utc)
    now = utcnow()
    assert now.tzinfo == dt.timezone.utc and before <= now <= dt.datetime.now(dt.timezone.utc)


_CONVERSIONS = {"FromDatetime", "ToDatetime", "FromTimedelta", "ToTimedelta", "FromJsonString", "ToJsonString",
                "FromMilliseconds", "ToMilliseconds", "FromSeconds", "ToSeconds"}
_OWN_HELPERS = {"utcnow": "domain/clock.py", "as_utc": "runtime/db.py"}


def _repeats(path: Path) -> list[str]:
    where = path.relative_to(SERVICES).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr, owner = node.func.attr, node.func.value
            if attr in _CONVERSIONS and where != "runtime/wire.py":
                found.append(f"{where}:{node.lineno} .{attr}()")
            if attr == "Money" and isinstance(owner, ast.Name) and owner.id == "common_pb2" and where != "runtime/wire.py":
                found.append(f"{where}:{node.lineno} common_pb2.Money()")
            if attr in ("now", "utcnow") and isinstance(owner, ast.Attribute) and owner.attr == "datetime" \
                    and where != "domain/clock.py":
                found.append(f"{where}:{node.lineno} datetime.{attr}()")
        if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in ("utc", "utcnow", "as_utc") \
                and _OWN_HELPERS.get(node.name) != where:
            found.append(f"{where}:{node.lineno} def {node.name}")
    return found


def test_conversions_and_the_clock_each_live_in_one_place():
    paths = [p for p in sorted(SERVICES.rglob("*.py")) if "generated" not in p.parts]
    assert [repeat for path in paths for repeat in _repeats(path)] == []
