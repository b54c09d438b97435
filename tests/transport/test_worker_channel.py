"""Requests handed to worker processes (`server.workers` > 1) come back processed, whole and in
order: large ones, malformed ones, and after a caller gave up on one."""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from processor.config import load_config
from processor.core.decode import MalformedRequest
from processor.transport.workers import PoolProcessing
from tests.support.otlp_builders import span, trace_request


def pool(**environ: str) -> PoolProcessing:
    config = load_config(
        None,
        environ={
            "GENOPS_SERVER_WORKERS": "1",
            "GENOPS_POLICY_STATE_BACKEND": "memory",
            "GENOPS_LOGGING_LEVEL": "warning",
            **environ,
        },
    )
    return PoolProcessing(config, tempfile.mkdtemp())


def request(tag: str, spans: int = 3, padding: int = 0) -> bytes:
    attributes = {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000, "note": "x" * padding}
    return trace_request([span(name=f"{tag}-{i}", attributes=attributes) for i in range(spans)]).SerializeToString()


def names_and_costs(payload: bytes) -> list[tuple[str, bool]]:
    parsed = trace_pb.ExportTraceServiceRequest.FromString(payload)
    return [
        (s.name, any(kv.key == "genops.cost.total" for kv in s.attributes))
        for rs in parsed.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


def run(processing: PoolProcessing, body) -> object:
    async def main():
        await processing.start()
        try:
            # A request stuck in a worker's hand-off fails the test instead of hanging it.
            return await asyncio.wait_for(body(), 60)
        finally:
            processing.close()

    return asyncio.run(main())


def test_requests_and_results_larger_than_the_shared_buffers_go_through_whole():
    # 1 MiB buffers; a ~1.6 MiB request (and a larger result) take the socket instead.
    processing = pool(GENOPS_SERVER_MAX_RECV_MESSAGE_SIZE_MIB="1", GENOPS_DOWNSTREAM_MAX_SEND_MESSAGE_SIZE_MIB="1")
    big, small = request("big", spans=400, padding=4000), request("small")
    assert len(big) > 1024 * 1024

    async def body():
        return [await processing.process("traces", raw) for raw in (big, small, big)]

    results = run(processing, body)
    assert [r.items for r in results] == [400, 3, 400]
    for result, tag, spans in zip(results, ("big", "small", "big"), (400, 3, 400), strict=True):
        assert names_and_costs(result.payload) == [(f"{tag}-{i}", True) for i in range(spans)]


def test_a_malformed_request_fails_in_the_front_process_and_the_worker_serves_on():
    processing = pool()

    async def body():
        with pytest.raises(MalformedRequest):
            await processing.process("traces", b"\x0a\xff\xff\xff\xff\x0f not protobuf")
        return await processing.process("traces", request("after"))

    result = run(processing, body)
    assert names_and_costs(result.payload) == [(f"after-{i}", True) for i in range(3)]


def test_a_caller_that_gives_up_does_not_get_its_answer_handed_to_the_next_request():
    processing = pool()

    async def body():
        first = asyncio.ensure_future(processing.process("traces", request("abandoned", spans=300, padding=200)))
        await asyncio.sleep(0)
        first.cancel()
        second = await processing.process("traces", request("next"))
        with pytest.raises(asyncio.CancelledError):
            await first
        return second

    result = run(processing, body)
    assert names_and_costs(result.payload) == [(f"next-{i}", True) for i in range(3)]
