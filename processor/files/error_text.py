"""Error text that is safe to log: values and messages shortened to a bounded length.

Messages about a file name the offending value; a value can be megabytes (a huge scalar, a
pattern of thousands of groups), and one log line must never carry it whole.
"""

from __future__ import annotations

VALUE_CHARS = 120
MESSAGE_CHARS = 1000


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text`, cut to about `limit` characters with the number of characters left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def shown(value: object, limit: int = VALUE_CHARS) -> str:
    """repr(value) for a message, cut to about `limit` characters."""
    if isinstance(value, str | bytes) and len(value) > limit * 4:
        # Not repr of the whole value: a long string would be copied only to be cut.
        value = value[: limit * 4]
    return clip(repr(value), limit)


def one_line(exc: BaseException) -> str:
    """An exception as one clipped line: what a command prints before exiting non-zero."""
    return clip(" ".join(str(exc).split()) or type(exc).__name__)
