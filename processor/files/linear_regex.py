"""User-supplied regexes (pricing `match: regex` entries, policy model globs, redaction rules) run on
the Rust `regex` crate, through polars: matching is linear in the text whatever the pattern, so a
pattern like `(a+)+b` cannot stall the event loop as Python's backtracking `re` does. Polars is
already what runs the redaction patterns and policy globs, so every user pattern has one dialect.

The price: no look-around and no backreferences. Such a pattern is refused when its file is
loaded, with the engine's reason, as is one whose compiled form exceeds the engine's size limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from processor.files.error_text import clip, shown


def regex_problem(pattern: str) -> str | None:
    """Why the engine refuses `pattern` (one short line), or None when it compiles."""
    try:
        pl.select(pl.lit("").str.contains(pattern))
    except pl.exceptions.PolarsError as exc:
        return regex_reason(str(exc))
    return None


def fullmatch_pattern(pattern: str) -> str:
    """`pattern` matching whole texts only, case-insensitively."""
    return rf"(?i)\A(?:{pattern})\z"


def first_fullmatch(patterns: Sequence[str], text: str) -> int | None:
    """The index of the first of `patterns` (as built by fullmatch_pattern) matching `text`."""
    if not patterns:
        return None
    row = pl.select(pl.lit(text).str.contains(p).alias(str(i)) for i, p in enumerate(patterns)).row(0)
    return next((i for i, hit in enumerate(row) if hit), None)


def regex_reason(message: str) -> str:
    """The engine's own words, without the pattern echoed back (it may be huge)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return clip(line.removeprefix("error:").strip(), 200)
    first = lines[0] if lines else "invalid regex"
    return clip(first.removeprefix("regex error:").strip(), 200)


def refused(pattern: str, reason: str) -> str:
    """The message for a refused pattern: the pattern (shortened) and the reason."""
    return f"bad regex {shown(pattern)}: {reason} (a linear-time engine: no look-around, no backreferences)"


def glob_regex(patterns: Sequence[str]) -> str:
    """Case-insensitive, anchored regex matching any of the shell-style patterns (* and ?)."""
    return "(?i)^(?:" + "|".join(_glob(p) for p in patterns) + ")$"


def _glob(pattern: str) -> str:
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char.isascii() and not char.isalnum() and char not in " _-":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)
