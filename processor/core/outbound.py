"""Redaction of what the sidecar itself sends out: metric labels, attributes the stages write,
budget API answers and error texts.

The redaction stage rewrites the values of the request as received. Everything else that leaves
the process is made by the sidecar from those values before they were redacted (a team label
from `k8s.namespace.name`, the model a span named, an exception message) and passes here first:
each value meets the same rules as an attribute of the key it stands for would. Values repeat
(a batch has a few teams and models), so each distinct one is redacted once and remembered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

# Prometheus label values, and the values an API answer or a log line carries, are cut to this
# many bytes: 200 team names of 20 KiB made one scrape 109 MB.
LABEL_MAX_BYTES = 128
# Error messages the sidecar writes to spans and answers: long enough to say what failed.
MESSAGE_MAX_BYTES = 1024
# What a label or answer shows in place of a value the rules drop.
DROPPED = "[REDACTED]"
# Distinct values remembered; the cache starts over when full (an unbounded stream of distinct
# values must not grow memory, and re-redacting is only slower).
_CACHE_LIMIT = 8192

# (key, value) -> the value as the redaction rules leave an attribute of that key, or None: dropped.
RedactOne = Callable[[str, str], "str | None"]


def cap_bytes(text: str, limit: int = LABEL_MAX_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, at a character boundary."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


class OutboundRedaction:
    """`redact_one` is the redaction stage's rule set for one value; None: redaction is off, and
    values only get their length cap."""

    def __init__(self, redact_one: RedactOne | None) -> None:
        self._redact_one = redact_one
        self._seen: dict[tuple[str, str], str | None] = {}
        # Finished label values: a batch asks for each of its label values again.
        self._labels: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._redact_one is not None

    def text(self, key: str, value: str) -> str | None:
        """`value` as an attribute `key` would leave the sidecar; None: the rules drop it."""
        if self._redact_one is None:
            return value
        found = self._seen.get((key, value), _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        redacted = self._redact_one(key, value)
        with self._lock:
            if len(self._seen) >= _CACHE_LIMIT:
                self._seen.clear()
            self._seen[(key, value)] = redacted
        return redacted

    def value(self, key: str, value: str) -> str:
        """`value` as an attribute `key` would leave the sidecar, DROPPED where the rules drop it."""
        return _or_dropped(self.text(key, value))

    def label(self, key: str, value: str) -> str:
        """A metric label (or API field) value standing for attribute `key`: redacted, then capped."""
        found = self._labels.get((key, value))
        if found is None:
            found = cap_bytes(self.value(key, value))
            with self._lock:
                if len(self._labels) >= _CACHE_LIMIT:
                    self._labels.clear()
                self._labels[(key, value)] = found
        return found

    def free_text(self, value: str) -> str:
        """A free text made by the sidecar (an error message, a log line's value), redacted."""
        return self.value(MESSAGE_KEY, value)

    def message(self, value: str) -> str:
        """An error message written to spans or answers: redacted, capped."""
        return cap_bytes(self.free_text(value), MESSAGE_MAX_BYTES)

    def strings(self, key: str, column: pl.Series, arrow: pa.Array | None = None) -> pl.Series | None:
        """`column` (strings of attribute `key`, one per item; `arrow`: the same values as Arrow,
        where the stage has them) redacted, or None when no value changes."""
        if self._redact_one is None or column.dtype != pl.String:
            return None
        if arrow is None:
            arrow = column.to_arrow()
        if arrow.null_count == len(arrow):
            return None
        # (Arrow's unique: a few µs where polars' takes a hundred on a fresh string-view column.)
        distinct = [value for value in pc.unique(arrow).to_pylist() if value is not None]
        # A dropped value is written as DROPPED: a null would keep what the item arrived with.
        changed = {value: self.value(key, value) for value in distinct}
        changed = {value: new for value, new in changed.items() if new != value}
        if not changed:
            return None
        # A String column mapped str -> str stays String (polars 2 dropped `return_dtype` here).
        return column.replace(changed)


def _or_dropped(redacted: str | None) -> str:
    return DROPPED if redacted is None else redacted


# The key error texts are redacted as (only the value rules act on `genops.*`).
MESSAGE_KEY = "genops.processing.error"
_MISSING = object()

NO_REDACTION = OutboundRedaction(None)
