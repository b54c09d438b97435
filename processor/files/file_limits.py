"""Size caps on the files the sidecar parses: pricing tables, policy files, redaction rules, config.

Checked on the file's size before any byte is parsed: YAML in Python takes about 70-100 bytes of
memory per byte of text and seconds per MiB, so an unbounded file is an unbounded stall and an
out-of-memory kill. The caps leave room for tables many times the shipped ones (68 KiB in all)
and for a full LiteLLM import (about 1 MiB).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MIB = 1024 * 1024
MAX_FILE_BYTES = 8 * MIB
MAX_DIRECTORY_BYTES = 32 * MIB


class FileTooLarge(ValueError):
    pass


def read_limited(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; FileTooLarge (a ValueError) otherwise,
    OSError when it cannot be read."""
    with open(path, "rb", opener=_nonblocking) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            # A FIFO or a device would block the read forever or never end.
            raise FileTooLarge(f"{path}: not a regular file")
        if info.st_size > limit:
            raise FileTooLarge(f"{path}: {_size(info.st_size)} is over the {_size(limit)} limit of one file")
        # Read one byte past the limit: a file that grew since fstat is refused, not truncated.
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"{path}: over the {_size(limit)} limit of one file")
    return data


def read_text_limited(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """read_limited, decoded as UTF-8 (ValueError naming the file when it is not)."""
    data = read_limited(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileTooLarge(f"{path}: not UTF-8 text (byte {exc.start})") from None


def check_directory_total(path: Path, files: list[Path], limit: int = MAX_DIRECTORY_BYTES) -> None:
    """FileTooLarge when the files of a directory add up to more than `limit` bytes."""
    total = 0
    for file in files:
        try:
            total += os.stat(file).st_size
        except OSError:
            continue  # reported by the read of that file
    if total > limit:
        raise FileTooLarge(f"{path}: its files add up to {_size(total)}, over the {_size(limit)} limit of a directory")


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def _size(count: int) -> str:
    return f"{count / MIB:.1f} MiB" if count >= MIB else f"{count} bytes"
