"""Span times the tests share, so a budget window or a ledger day is the same one in every module."""

from __future__ import annotations

import datetime as dt
import time

HOUR_NS = 3_600 * 10**9
# A fixed instant (2025-10-09 08:53:20 UTC) for stages run in-process, whose windows follow the spans.
BASE_NS = 1_760_000_000_000_000_000
# Now, whole seconds: a real sidecar's budget windows follow its own wall clock, not the spans'.
START_NS = int(time.time()) * 10**9
# A ledger day that is over (2026-12-01 UTC) and its noon, so no span sits on a day boundary.
DAY_START = int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp())
NOON_NS = (DAY_START + 12 * 3600) * 10**9
