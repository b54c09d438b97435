"""The OTLP/gRPC client side: a paired latency probe and a multi-channel throughput run.

Requests are pre-serialised bytes sent with no serializer, so the client's own cost per request
is a memory copy plus gRPC framing, not protobuf encoding.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from grpc import aio

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MIB = 1024 * 1024


def _channel(endpoint: str) -> aio.Channel:
    # A local subchannel pool gives every channel its own TCP connection, so --channels is the
    # number of connections (one Collector exporter uses one).
    return aio.insecure_channel(
        endpoint,
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", 256 * MIB),
            ("grpc.max_receive_message_length", 256 * MIB),
        ],
    )


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class LatencyProbe:
    """Round trips of the same batches, one at a time, straight to the sink and through the target."""

    direct_ms: list[float] = field(default_factory=list)
    through_ms: list[float] = field(default_factory=list)

    @property
    def added_ms(self) -> list[float]:
        return [t - d for t, d in zip(self.through_ms, self.direct_ms, strict=True)]

    def summary(self) -> dict[str, float]:
        added = self.added_ms
        return {
            "direct_p50_ms": percentile(self.direct_ms, 50),
            "direct_p99_ms": percentile(self.direct_ms, 99),
            "through_p50_ms": percentile(self.through_ms, 50),
            "through_p99_ms": percentile(self.through_ms, 99),
            # Percentiles of the per-batch difference: each pair was sent back to back, so machine
            # noise hits both sides of a pair alike.
            "added_p50_ms": percentile(added, 50),
            "added_p99_ms": percentile(added, 99),
            "added_mean_ms": statistics.fmean(added) if added else float("nan"),
        }


async def _probe(target: str, sink: str, payloads: Sequence[bytes], count: int) -> LatencyProbe:
    probe = LatencyProbe()
    async with _channel(target) as through_channel, _channel(sink) as direct_channel:
        through = through_channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        direct = direct_channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        for i in range(count):
            payload = payloads[i % len(payloads)]
            # Alternate which path goes first so neither always gets the warmer caches.
            order = (direct, through) if i % 2 == 0 else (through, direct)
            times = {}
            for call in order:
                started = time.perf_counter()
                await call(payload, timeout=30)
                times[call] = (time.perf_counter() - started) * 1000
            probe.direct_ms.append(times[direct])
            probe.through_ms.append(times[through])
    return probe


def latency_probe(target: str, sink: str, payloads: Sequence[bytes], count: int) -> LatencyProbe:
    return asyncio.run(_probe(target, sink, payloads, count))


@dataclass
class Throughput:
    requests: int
    spans: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    error_codes: dict[str, int]

    @property
    def spans_per_second(self) -> float:
        return self.spans / self.seconds if self.seconds else 0.0


async def _load(
    target: str,
    payloads: Sequence[bytes],
    spans_per_request: int,
    channels: int,
    inflight: int,
    max_requests: int,
    max_seconds: float,
    rate: float,
) -> Throughput:
    issued = 0
    ok = 0
    errors: dict[str, int] = {}
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + max_seconds

    async def sender(call, offset: int) -> None:
        nonlocal issued, ok
        while True:
            now = time.perf_counter()
            if issued >= max_requests or now >= deadline:
                return
            index = issued
            issued += 1
            if rate > 0:
                # Open-loop pacing: request k is due at start + k/rate, late ones go at once.
                due = started + index / rate
                if due >= deadline:
                    return
                if due > now:
                    await asyncio.sleep(due - now)
            payload = payloads[(index + offset) % len(payloads)]
            sent = time.perf_counter()
            try:
                await call(payload, timeout=60)
            except aio.AioRpcError as exc:
                code = exc.code().name
                errors[code] = errors.get(code, 0) + 1
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(0.01)
                continue
            latencies.append((time.perf_counter() - sent) * 1000)
            ok += 1

    opened = [_channel(target) for _ in range(channels)]
    try:
        calls = [c.unary_unary(EXPORT, request_serializer=None, response_deserializer=None) for c in opened]
        for c in opened:
            await asyncio.wait_for(c.channel_ready(), 30)
        started = time.perf_counter()
        deadline = started + max_seconds
        await asyncio.gather(*(sender(call, offset) for offset, call in enumerate(calls) for _ in range(inflight)))
        elapsed = time.perf_counter() - started
    finally:
        for c in opened:
            await c.close()
    return Throughput(
        requests=ok,
        spans=ok * spans_per_request,
        errors=sum(errors.values()),
        seconds=elapsed,
        latencies_ms=latencies,
        error_codes=errors,
    )


def load(
    target: str,
    payloads: Sequence[bytes],
    spans_per_request: int,
    *,
    channels: int = 4,
    inflight: int = 2,
    max_requests: int = 1000,
    max_seconds: float = 30.0,
    rate: float = 0.0,
) -> Throughput:
    """Sends until `max_requests` were issued or `max_seconds` passed, `channels x inflight` at a time.

    `rate` > 0 paces requests (requests per second over all channels) instead of sending flat out.
    """
    return asyncio.run(_load(target, payloads, spans_per_request, channels, inflight, max_requests, max_seconds, rate))
