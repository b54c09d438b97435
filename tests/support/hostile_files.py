"""Files made to exhaust a parser or the disk: a YAML alias bomb, a huge file that takes no space."""

from __future__ import annotations

from pathlib import Path

# 787 bytes that stand for 9^9 strings once expanded.
ALIAS_BOMB = "\n".join(
    ['version: "1"', "provider: openai", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["models: [{model: gpt-4o, input: *a8}]", ""]
)


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (the size check must not read it)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path
