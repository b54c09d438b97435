"""The version-safe matching rule: what may follow a prefix entry's model name.

A prefix entry (`match: prefix`) names a model family's base name; it prices that name and its
snapshots, and nothing else. After the entry's text, only a snapshot suffix may follow:

- a date: `-2025-08-07`, `-20250807`, `@20250807`, `_20250807`, or a month and day, `-0613` or
  `-06-13` (OpenAI's and Gemini's short form; a valid month and day, so Mistral's year-month
  versions such as `-2411` are not dates: they are new models, often at new prices);
- a three-digit snapshot number: `-001`, `-002` (Gemini on Vertex AI);
- a Bedrock model version: `-v1`, `-v2:0`, `:0`, and a provisioned context size such as `:200k`;
- a Vertex AI version: `@001`, `@latest`, `@default`, `@20250807`;
- these in that order (`-20250929-v1:0`), or nothing.

A prefix entry may end inside such a suffix (genai-prices' `claude-sonnet-4-2025`,
`claude-sonnet-4@`, `gpt-4-0`): it then stands for the name before the suffix's separator
(`-`, `_`, `@`, `:`), and matches that name's snapshots that begin with the entry's tail, so
`claude-sonnet-4-2025` prices `claude-sonnet-4-20250514` (not `claude-sonnet-4-5`).

Everything else makes a different model, however close the name: `gpt-5` does not price
`gpt-5.2`, `gpt-5-mini` or `gpt-5.1-codex`, nor `claude-opus-4` `claude-opus-4-6`. Not
snapshots either: `-preview`, `-exp` and `-latest` (previews have been priced apart from the
model they precede, e.g. Gemini 2.5 Flash preview against GA; a `-latest` alias moves to newer
models), and router suffixes such as `:free`. A table prices such names with entries of their
own (a `-latest` alias as a dated price history of what it pointed to when).

A name that starts with a family's text but fails the rule is *near* that family: the cost stage
writes it as `estimated` with the family's prices (or leaves it unpriced, `cost.near_matches`),
never as `priced`.
"""

from __future__ import annotations

import re

_MONTH_DAY = r"(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01])"
_DATE = rf"(?:[-_@]20\d\d-?{_MONTH_DAY}|-{_MONTH_DAY})"
_SNAPSHOT_NUMBER = r"(?:-\d{3})"
_BEDROCK_VERSION = r"(?:-v\d+(?::\d+)?|:\d+)(?::\d+k)?"
_VERTEX_VERSION = r"(?:@(?:\d{3}|latest|default|20\d{6}))"
SNAPSHOT_SUFFIX = re.compile(rf"{_DATE}?{_SNAPSHOT_NUMBER}?(?:{_BEDROCK_VERSION})?{_VERTEX_VERSION}?")


def is_snapshot_suffix(rest: str) -> bool:
    """Whether `rest`, what follows a prefix entry's name in a (lowercased) model name, only names
    a snapshot of that model (the empty rest included)."""
    return SNAPSHOT_SUFFIX.fullmatch(rest) is not None


_SEPARATORS = "-_@:"
# A suffix is at most a date, a number and two versions: an entry's tail inside one is shorter.
_MAX_TAIL = 24


def is_snapshot_of(name: str, family: str) -> bool:
    """Whether the lowercased `name` is the prefix entry `family` itself or one of its snapshots
    (when `family` ends inside a snapshot suffix: a snapshot of the name before it)."""
    if not name.startswith(family):
        return False
    if is_snapshot_suffix(name[len(family) :]):
        return True
    for cut in range(len(family) - 1, max(len(family) - _MAX_TAIL, 0), -1):
        if family[cut] in _SEPARATORS and is_snapshot_suffix(name[cut:]):
            return True
    return False
