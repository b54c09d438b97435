"""Runs a file loader in a fresh Python process, for hot reloads.

A reload parses a file someone else wrote. In this process it would share the GIL with the event
loop (the C YAML parser holds it for seconds on a large file), its memory peak would be this
process's, and nothing could interrupt it at shutdown. In a child it competes only for CPU (at a
lower priority), its memory goes away with it, and it is killed when it runs past its time or the
sidecar stops. The loaded value comes back pickled over a pipe (no file: the root filesystem may
be read-only).

`python -m processor.files.isolated_load MODULE:FUNCTION PATH` is the child's side.
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from processor.files.error_text import clip

T = TypeVar("T")
POLL_SECONDS = 0.1
# The child imports the loader from the same copy of the package as this process.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class LoadFailed(ValueError):
    """The loader refused the file, died, or ran out of time; str() is one short line."""


class LoadStopped(Exception):
    """The load was abandoned because the caller is stopping."""


def load_isolated(load: Callable[[Path], T], path: Path, *, timeout: float, stop: threading.Event) -> T:
    """load(path), computed in a child process; LoadFailed with the reason when it raises, dies or
    takes more than `timeout` seconds, LoadStopped as soon as `stop` is set."""
    target = f"{load.__module__}:{load.__qualname__}"
    child = subprocess.Popen(
        [sys.executable, "-m", "processor.files.isolated_load", target, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))},
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            if stop.is_set():
                raise LoadStopped
            try:
                out, err = child.communicate(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                # communicate keeps what it has read so far; calling it again loses nothing.
                if time.monotonic() > deadline:
                    raise LoadFailed(f"loading took more than {timeout:g} s; stopped") from None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
        raise LoadFailed(clip(f"the loader process failed ({_status(child.returncode)}): {last[0]}", 500))
    outcome, value = pickle.loads(out)  # our own child's output
    if outcome == "error":
        raise LoadFailed(value)
    return value


def _status(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _child(target: str, path: str) -> int:
    # Below the request path in CPU priority: the reload can wait, a request should not.
    os.nice(10)
    module, _, name = target.partition(":")
    load = getattr(importlib.import_module(module), name)
    try:
        result: tuple[str, object] = ("ok", load(Path(path)))
    except Exception as exc:  # every refusal goes back as its message, not a traceback
        result = ("error", clip(" ".join(str(exc).split())))
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
