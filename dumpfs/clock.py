"""Times a dump's header claims, as UTC datetimes; a claim no calendar holds is no time at all."""

from __future__ import annotations

from datetime import datetime, timezone


def unix_time(seconds: float) -> datetime | None:
    """`seconds` since 1970 as UTC, or None when unset (<= 0) or beyond the year 9999."""
    if not seconds > 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, ValueError, OSError):
        return None
