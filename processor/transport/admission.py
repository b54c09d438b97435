"""Admission of export requests: how many may be in flight, and how many decompressed bytes.

A request is admitted before its message is read, so a refusal costs neither the decompression
nor the memory: gRPC decompresses a message only when the handler reads it. A request being read
holds a reservation of the largest message it could decompress to; once read it holds its real
size until it is answered.
"""

from __future__ import annotations

import asyncio

# The default budget of decompressed request bytes in flight, in largest messages: 4 x 64 MiB
# keeps a default sidecar well inside the 1 GiB limit of k8s/ once decoding and encoding copies
# are added.
BUDGET_IN_MESSAGES = 4


class InflightBudget:
    """Counts requests and bytes in flight; refusals are answered UNAVAILABLE by the caller."""

    def __init__(self, max_requests: int, max_message_bytes: int, max_bytes: int | None = None) -> None:
        self.max_requests = max_requests
        self.max_message_bytes = max_message_bytes
        # Never below one largest message: a request the server accepts must fit when alone.
        self.max_bytes = max(max_bytes or BUDGET_IN_MESSAGES * max_message_bytes, max_message_bytes)
        self.requests = 0
        self.held_bytes = 0
        self.reading = 0
        self._changed = asyncio.Condition()

    def enter(self) -> bool:
        if self.requests >= self.max_requests:
            return False
        self.requests += 1
        return True

    def leave(self) -> None:
        self.requests -= 1

    async def start_read(self) -> bool:
        """Reserves room to read one message: waits while other reads hold the room (they end
        quickly), False when bytes already read leave no room for one more message."""
        async with self._changed:
            while True:
                reserved = self.held_bytes + (self.reading + 1) * self.max_message_bytes
                if reserved <= self.max_bytes or (self.held_bytes == 0 and self.reading == 0):
                    self.reading += 1
                    return True
                if self.held_bytes + self.max_message_bytes > self.max_bytes:
                    return False
                await self._changed.wait()

    async def end_read(self, size: int) -> None:
        """The message was read (`size` bytes) or failed to be (0): the reservation becomes its size."""
        async with self._changed:
            self.reading -= 1
            self.held_bytes += size
            self._changed.notify_all()

    async def release(self, size: int) -> None:
        async with self._changed:
            self.held_bytes -= size
            self._changed.notify_all()
