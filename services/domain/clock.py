"""The one clock: the current time, always in UTC (services take it as their default `clock`)."""
from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
