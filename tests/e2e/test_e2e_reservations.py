"""Reservation before execution end to end (issue 21, Done when): two `genops-sidecar serve`
processes (two workers each) sharing one real redis-server, 8 concurrent gateway clients
reserving against one budget over gRPC and HTTP. No over-commit; every reserved span that passes
through a sidecar is reconciled exactly once (a retried batch too); expired holds are released."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from processor.core import genops_semconv as gs
from processor.protos import budget_pb2, budget_pb2_grpc
from processor.stages.policy import conformance
from tests.support.collector_harness import free_port
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink
from tests.support.redis_server import redis_sum, start_redis
from tests.support.serve import http_get, sample_plain, terminate, wait_for, wait_ready

TOKEN = "reservation-e2e-token-0123456789"
LIMIT = 2.0
# Binary fractions: sums are exact in any order, so "exactly full" is a fact, not a tolerance.
ESTIMATE = 0.125
ACTUAL = 0.0625
CLIENTS = 8
ATTEMPTS = 6  # per client: 48 attempts for 16 slots
POLICY = {"budgets": [{"name": "ml", "limit_usd": LIMIT, "period": "daily", "mode": "enforced", "dimension": "team"}]}
ATTRIBUTION = {"team": "ml", "project": "chat", "environment": "production"}


class Sidecar:
    def __init__(self, tmp_path, name: str, redis_port: int, sink: OtlpSink) -> None:
        policy_file = tmp_path / "policy.json"
        policy_file.write_text(json.dumps(POLICY))
        self.grpc_port, http_port = free_port(), free_port()
        self.http = f"127.0.0.1:{http_port}"
        env = {
            "GENOPS_SERVER_LISTEN": f"127.0.0.1:{self.grpc_port}",
            "GENOPS_SERVER_WORKERS": "2",
            "GENOPS_DOWNSTREAM_ENDPOINT": sink.endpoint,
            "GENOPS_HTTP_LISTEN": self.http,
            "GENOPS_POLICY_POLICY_FILE": str(policy_file),
            "GENOPS_POLICY_STATE_BACKEND": "redis",
            "GENOPS_POLICY_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "GENOPS_POLICY_STATE_PATH": str(tmp_path / name / "budgets.sqlite"),
            "GENOPS_BUDGET_API_TOKEN": TOKEN,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "processor", "serve"],
            start_new_session=True,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_ready(self.process, self.http)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.budgets = budget_pb2_grpc.BudgetServiceStub(self.channel)

    def reserve_grpc(self, request: dict, token: str = TOKEN) -> dict:
        answer = self.budgets.Reserve(
            budget_pb2.ReserveRequest(**request), metadata=[("authorization", f"Bearer {token}")], timeout=10
        )
        return {"result": answer.result, "reason_code": answer.reason_code, "reserved": answer.reserved}

    def post(self, path: str, body: dict, token: str = TOKEN) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://{self.http}{path}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def metric(self, name: str, labels: str = "") -> float:
        text = http_get(f"http://{self.http}/metrics")[1]
        # One family per name: a second one (the front process's and the workers') breaks a scrape.
        assert text.count(f"# TYPE {name} ") <= 1, text
        try:
            return sample_plain(text, name + labels)
        except AssertionError:
            return 0.0

    def stop(self) -> str:
        self.channel.close()
        return terminate(self.process)


@pytest.fixture
def setup(tmp_path):
    redis_port = free_port()
    (tmp_path / "redis").mkdir()
    redis_process = start_redis(redis_port, tmp_path / "redis")
    sink = OtlpSink().start()
    sidecars: list[Sidecar] = []
    try:
        sidecars = [Sidecar(tmp_path, name, redis_port, sink) for name in ("a", "b")]
        yield sidecars, sink, redis_port
    finally:
        for sidecar in sidecars:
            sidecar.stop()
        sink.stop()
        redis_process.kill()
        redis_process.wait()


def ids(client: int, attempt: int) -> tuple[str, str]:
    return (f"{client + 1:08x}{attempt + 1:08x}{'ab' * 8}", f"{client + 1:08x}{attempt + 1:08x}")


def reserve(sidecar: Sidecar, client: int, attempt: int, ttl: float, usd: float = ESTIMATE) -> dict:
    trace_id, span_id = ids(client, attempt)
    request = {"trace_id": trace_id, "span_id": span_id, "attribution": ATTRIBUTION, "model": "gpt-4o"}
    request |= {"estimated_usd": usd, "ttl_seconds": ttl}
    if client % 2:  # half the gateways use HTTP
        status, answer = sidecar.post("/v1/reservations", request)
        assert status == 200, answer
        return answer
    return sidecar.reserve_grpc(request)


def reserved_span(trace_id: str, span_id: str):
    attributes = {"genops.team": "ml", "genops.project": "chat", "genops.environment": "production"}
    attributes |= {"gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat", "genops.cost.total": ACTUAL}
    found = span(attributes=attributes, start_time_unix_nano=time.time_ns())
    found.trace_id, found.span_id = bytes.fromhex(trace_id), bytes.fromhex(span_id)
    found.end_time_unix_nano = found.start_time_unix_nano + 10**6
    return found


def consumed(redis_port: int) -> float:
    return redis_sum(redis_port, "genops:{budget}:ml|ml|*")


def test_two_sidecars_sharing_redis_never_over_commit_and_reconcile_each_span_once(setup):
    sidecars, sink, redis_port = setup
    # Wrong or missing token: refused on both APIs.
    with pytest.raises(grpc.RpcError) as refused:
        sidecars[0].reserve_grpc({"trace_id": "1" * 32, "span_id": "1" * 16, "estimated_usd": 0.1}, token="wrong")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sidecars[1].post("/v1/reservations", {"trace_id": "1" * 32}, token="wrong")[0] == 401

    # Phase 1: 8 gateways, 6 reservations each, alternating sidecars, all at once.
    start = threading.Barrier(CLIENTS)

    def gateway(client: int) -> list[tuple[str, str]]:
        start.wait()
        allowed = []
        for attempt in range(ATTEMPTS):
            answer = reserve(sidecars[(client + attempt) % 2], client, attempt, ttl=120)
            if answer["result"] == gs.ALLOWED:
                allowed.append(ids(client, attempt))
            else:
                assert answer["result"] == gs.BLOCKED
                assert answer["reason_code"] in (gs.BUDGET_EXCEEDED, gs.BUDGET_RESERVATION_FAILED)
        return allowed

    with ThreadPoolExecutor(CLIENTS) as pool:
        allowed = [awu for found in pool.map(gateway, range(CLIENTS)) for awu in found]
    # Exactly full, never beyond: 16 holds of 0.125 in a 2.0 budget.
    assert len(allowed) == int(LIMIT / ESTIMATE)
    assert reserve(sidecars[0], 0, ATTEMPTS, ttl=120, usd=0.001)["reason_code"] == gs.BUDGET_EXCEEDED

    # Phase 2: the spans of 14 reservations come through either sidecar; every other batch is
    # retried, as the Collector does after a failed export. Two reservations get no span.
    with_span, without_span = allowed[:14], allowed[14:]
    for at, (trace_id, span_id) in enumerate(with_span):
        request = trace_request([reserved_span(trace_id, span_id)])
        channel = sidecars[at % 2].channel
        export_traces(channel, request)
        if at % 2 == 0:
            export_traces(sidecars[(at + 1) % 2].channel, request)  # a retry may reach the other one
    wait_for(lambda: len(sink.spans()) >= 14 + 7, what="spans forwarded")
    by_id: dict[tuple[str, str], list[dict]] = {}
    for received in sink.spans():
        key = (received.span.trace_id.hex(), received.span.span_id.hex())
        by_id.setdefault(key, []).append(received.attributes)
        names = [event.name for event in received.span.events]
        assert gs.EVENT_BUDGET_RESERVATION in names and gs.EVENT_BUDGET_RECONCILIATION in names, names
    assert set(by_id) == set(with_span)
    for copies in by_id.values():
        for attributes in copies:
            assert attributes[gs.ACCOUNTING_RESERVED] == ESTIMATE
            assert attributes[gs.ACCOUNTING_ACTUAL] == ACTUAL
            assert attributes[gs.ACCOUNTING_RECONCILIATION_DELTA] == ACTUAL - ESTIMATE
            assert gs.ACCOUNTING_INCOMPLETE not in attributes
    # Charged once each (the retries by fingerprint), holds of the 14 released.
    assert consumed(redis_port) == 14 * ACTUAL
    reconciled = sum(s.metric("genops_budget_reconciliations_total", '{status="complete"}') for s in sidecars)
    assert reconciled == 14
    # Room now: 2.0 - 14 x 0.0625 spent - 2 x 0.125 held = 0.875.
    assert reserve(sidecars[1], 1, ATTEMPTS + 1, ttl=120, usd=0.875 + 0.0625)["result"] == gs.BLOCKED
    released = {"trace_id": without_span[0][0], "span_id": without_span[0][1]}
    status, answer = sidecars[1].post("/v1/reservations/release", released)
    assert (status, answer) == (200, {"released": True})

    # Phase 3: the remaining room (0.875 + the released 0.125) held for one second and left to expire.
    assert reserve(sidecars[0], 2, ATTEMPTS + 2, ttl=1, usd=1.0)["result"] == gs.ALLOWED
    assert reserve(sidecars[1], 3, ATTEMPTS + 3, ttl=1, usd=0.001)["reason_code"] == gs.BUDGET_EXCEEDED
    wait_for(
        lambda: sum(s.metric("genops_budget_reservations_expired_total") for s in sidecars) == 1,
        what="the expired hold counted",
    )
    assert reserve(sidecars[1], 4, ATTEMPTS + 4, ttl=120, usd=1.0)["result"] == gs.ALLOWED

    # The span of the expired hold comes late: charged, and its reconciliation flagged incomplete.
    trace_id, span_id = ids(2, ATTEMPTS + 2)
    export_traces(sidecars[1].channel, trace_request([reserved_span(trace_id, span_id)]))
    wait_for(lambda: any(r.span.span_id.hex() == span_id for r in sink.spans()), what="late span")
    late = next(r for r in sink.spans() if r.span.span_id.hex() == span_id)
    assert late.attributes[gs.ACCOUNTING_INCOMPLETE] is True
    assert late.attributes[gs.ACCOUNTING_RESERVED] == 1.0
    assert consumed(redis_port) == 15 * ACTUAL

    # The reserved units, each once (a retried span is one unit), are GenOps v0.1 compliant at the
    # full level (§9.1): reservation and reconciliation included.
    unique = {}
    for received in sink.spans():
        unique.setdefault(received.span.span_id, received)
    report = conformance.check(
        [trace_request([r.span for r in unique.values()], resource={"service.name": "chat"})], conformance.FULL
    )
    assert report.units == 15 and not report.violations, [v.line() for v in report.violations]
    for sidecar in sidecars:
        stderr = sidecar.stop()
        assert "Traceback" not in stderr, stderr[-3000:]
    sidecars.clear()
