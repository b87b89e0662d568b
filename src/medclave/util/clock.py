"""The injected clock: services read the time through a ``Clock`` so tests can drive it, and
verification functions take ``now`` from their caller instead of reading any clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""A function answering the current time, timezone-aware (UTC)."""


def system_clock() -> datetime:
    """The wall clock, in UTC: the default ``Clock`` of every service."""
    return datetime.now(UTC)
