"""Reservation before execution (GenOps spec §3, processor/stages/policy/reservations.py) against the real
stores: a SQLite file and a real redis-server. Times are passed in, not waited for."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from processor.config import PolicyConfig, SidecarConfig
from processor.core import genops_semconv as gs
from processor.core.decode import decode_traces
from processor.stages.policy.reservation_store import INCOMPLETE_EXPIRED, INCOMPLETE_NO_ACTUAL
from processor.stages.policy.reservations import (
    ReservationBook,
    ReservationError,
    ReservationRequest,
    book_for,
    forget_book,
)
from processor.stages.policy.stage import build_policy_stage
from tests.support.collector_harness import free_port
from tests.support.otlp_builders import span, trace_request
from tests.support.redis_server import start_redis

LIMIT = 1.0
POLICY = {
    "budgets": [
        {"name": "ml-daily", "limit_usd": LIMIT, "period": "daily", "mode": "enforced", "dimension": "team"},
        {"name": "all-advisory", "limit_usd": 0.01, "period": "daily", "mode": "advisory"},
    ]
}
ATTRIBUTED = {"genops.team": "ml", "genops.project": "chat", "genops.environment": "production"}
ATTRIBUTION = {"team": "ml", "project": "chat", "environment": "production"}


@contextlib.contextmanager
def settings_of(kind: str, tmp_path) -> Iterator[dict[str, str]]:
    if kind == "memory":
        yield {"state_backend": "memory"}
        return
    if kind == "sqlite":
        yield {"state_backend": "sqlite", "state_path": str(tmp_path / "state" / "budgets.sqlite")}
        return
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    process = start_redis(port, redis_dir)
    try:
        yield {
            "state_backend": "redis",
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "state_path": str(tmp_path / "state" / "budgets.sqlite"),
        }
    finally:
        process.kill()
        process.wait()


@pytest.fixture(params=["sqlite", "redis", "memory"])
def store_settings(request, tmp_path):
    with settings_of(request.param, tmp_path) as settings:
        yield settings


# The stores several processes share.
@pytest.fixture(params=["sqlite", "redis"])
def shared_store_settings(request, tmp_path):
    with settings_of(request.param, tmp_path) as settings:
        yield settings


class Sidecar:
    """A policy stage and a reservation book over one store, as in one `serve` process."""

    def __init__(self, tmp_path, settings: dict[str, str]) -> None:
        policy_file = tmp_path / "policy.json"
        policy_file.write_text(json.dumps(POLICY))
        self.registry = CollectorRegistry()
        config = PolicyConfig(enabled=True, policy_file=str(policy_file), **settings)
        self.stage = build_policy_stage(config, self.registry)
        self.book = ReservationBook.from_config(SidecarConfig(policy=config), self.stage.budget_status, self.registry)
        # The sweeper thread off: these tests pass their own clock.
        self.book._stop.set()

    def reserve(self, ids: tuple[str, str], usd: float, now: float, ttl: float = 60.0):
        return self.book.reserve(ReservationRequest(*ids, ATTRIBUTION, "gpt-4o", "openai", usd, ttl_seconds=ttl), now)

    def send(self, spans, now: float):
        batch = decode_traces(trace_request(spans).SerializeToString(), self.stage.wanted_keys())
        reconciliation = self.stage.reconciliation
        original = reconciliation.add_changes
        reconciliation.add_changes = lambda b, c: original(b, c, now)  # the test's clock
        try:
            return self.stage.process(batch)
        finally:
            reconciliation.add_changes = original

    def consumed(self) -> float:
        return next(s.consumed_usd for s in self.stage.budget_status.status({"team": "ml"}) if s.name == "ml-daily")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def close(self) -> None:
        self.book.close()
        self.stage.close()


@pytest.fixture
def sidecar(tmp_path, store_settings):
    sidecar = Sidecar(tmp_path, store_settings)
    yield sidecar
    sidecar.close()


def ids(n: int) -> tuple[str, str]:
    return (f"{n + 1:032x}", f"{n + 1:016x}")


def llm_span(awu: tuple[str, str], cost: float | None, start_ns: int):
    attributes: dict[str, object] = {**ATTRIBUTED, "gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat"}
    if cost is not None:
        attributes["genops.cost.total"] = cost
    found = span(attributes=attributes, start_time_unix_nano=start_ns)
    found.trace_id, found.span_id = bytes.fromhex(awu[0]), bytes.fromhex(awu[1])
    found.end_time_unix_nano = start_ns + 10**9
    return found


def test_holds_count_until_the_budget_has_no_room(sidecar):
    now = time.time()
    first = sidecar.reserve(ids(0), 0.4, now)
    assert (first.result, first.reason_code, first.budget_name) == (gs.ALLOWED, "", "ml-daily")
    assert first.remaining == pytest.approx(0.6)
    assert sidecar.reserve(ids(1), 0.4, now).result == gs.ALLOWED
    # 0.8 held: 0.4 more does not fit (the advisory budget, held past its limit, never blocks).
    third = sidecar.reserve(ids(2), 0.4, now)
    assert (third.result, third.reason_code, third.budget_name) == (
        gs.BLOCKED,
        gs.BUDGET_RESERVATION_FAILED,
        "ml-daily",
    )
    assert sidecar.reserve(ids(3), 0.2, now).result == gs.ALLOWED
    # Held to the limit: no capacity at all.
    assert sidecar.reserve(ids(4), 0.01, now).reason_code == gs.BUDGET_EXCEEDED
    # A repeated Reserve (a gateway retrying a lost answer) gets the first answer, holds nothing more.
    again = sidecar.reserve(ids(0), 0.4, now)
    assert again.repeated and again.result == gs.ALLOWED and again.reserved == 0.4
    assert sidecar.metric("genops_budget_reservations_total", {"result": "ALLOWED", "reason_code": "none"}) == 3
    assert sidecar.consumed() == 0.0  # holds are not spend


def test_release_gives_the_room_back_once(sidecar):
    now = time.time()
    assert sidecar.reserve(ids(0), 0.9, now).result == gs.ALLOWED
    assert sidecar.reserve(ids(1), 0.2, now).result == gs.BLOCKED
    assert sidecar.book.release(*ids(0), now=now) is True
    assert sidecar.book.release(*ids(0), now=now) is False
    assert sidecar.reserve(ids(1), 0.2, now).result == gs.ALLOWED


def test_expired_holds_are_released_and_counted(sidecar):
    now = time.time()
    assert sidecar.reserve(ids(0), 0.9, now, ttl=10).result == gs.ALLOWED
    assert sidecar.reserve(ids(1), 0.5, now + 9).result == gs.BLOCKED
    assert sidecar.metric("genops_budget_reservations_expired_total") == 0
    assert sidecar.reserve(ids(1), 0.5, now + 11).result == gs.ALLOWED
    assert sidecar.metric("genops_budget_reservations_expired_total") == 1


def test_the_span_reconciles_its_reservation_once(sidecar):
    now = time.time()
    start_ns = int(now * 1e9)
    assert sidecar.reserve(ids(0), 0.5, now).result == gs.ALLOWED
    assert sidecar.reserve(ids(1), 0.25, now).result == gs.ALLOWED
    spans = [llm_span(ids(0), 0.3, start_ns), llm_span(ids(1), 0.25, start_ns), llm_span(ids(9), 0.125, start_ns)]
    first = sidecar.send(spans, now + 1)
    attrs = first.set_attributes
    assert attrs[gs.ACCOUNTING_RESERVED].to_list() == [0.5, 0.25, None]
    assert attrs[gs.ACCOUNTING_ACTUAL].to_list() == [0.3, 0.25, 0.125]
    assert attrs[gs.ACCOUNTING_RECONCILIATION_DELTA].to_list() == [pytest.approx(-0.2), 0.0, None]
    assert attrs[gs.ACCOUNTING_UNIT].to_list() == ["USD"] * 3
    assert gs.ACCOUNTING_INCOMPLETE not in attrs
    events = {(e.row, e.name): e for e in first.events}
    booked = events[(0, gs.EVENT_BUDGET_RESERVATION)]
    assert booked.attributes == {
        gs.ACCOUNTING_RESERVED: 0.5,
        gs.ACCOUNTING_UNIT: "USD",
        gs.BUDGET_NAME: "ml-daily",
        gs.BUDGET_REMAINING: pytest.approx(0.5),
    }
    assert booked.time_unix_nano == int(now * 1e9)
    settled = events[(0, gs.EVENT_BUDGET_RECONCILIATION)]
    assert settled.attributes[gs.ACCOUNTING_ACTUAL] == 0.3
    assert settled.attributes[gs.ACCOUNTING_RECONCILIATION_DELTA] == pytest.approx(-0.2)
    assert settled.time_unix_nano == start_ns + 10**9
    assert (2, gs.EVENT_BUDGET_RESERVATION) not in events
    # Holds released, actual charged: 0.3 + 0.25 + 0.125 spent, the rest of the budget free.
    assert sidecar.consumed() == pytest.approx(0.675)
    assert sidecar.reserve(ids(2), 0.325, now + 1).result == gs.ALLOWED
    assert sidecar.book.release(*ids(2), now=now + 1)
    # The Collector retries the batch: the same attributes and events, nothing charged or released.
    again = sidecar.send(spans, now + 2)
    assert again.set_attributes[gs.ACCOUNTING_RESERVED].to_list() == [0.5, 0.25, None]
    assert sorted((e.row, e.name) for e in again.events) == sorted((e.row, e.name) for e in first.events)
    assert sidecar.consumed() == pytest.approx(0.675)
    assert sidecar.metric("genops_budget_reconciliations_total", {"status": "complete"}) == 2


def test_a_span_after_expiry_is_charged_and_flagged_incomplete(sidecar):
    now = time.time()
    assert sidecar.reserve(ids(0), 0.5, now, ttl=5).result == gs.ALLOWED
    assert sidecar.book.sweep(now + 4) == 0
    assert sidecar.book.sweep(now + 5) == 1
    changes = sidecar.send([llm_span(ids(0), 0.375, int(now * 1e9))], now + 6)
    assert changes.set_attributes[gs.ACCOUNTING_INCOMPLETE].to_list() == [True]
    assert changes.set_attributes[gs.ACCOUNTING_RESERVED].to_list() == [0.5]
    settled = next(e for e in changes.events if e.name == gs.EVENT_BUDGET_RECONCILIATION)
    assert settled.attributes[gs.ACCOUNTING_INCOMPLETE_REASON] == INCOMPLETE_EXPIRED
    assert settled.attributes[gs.ACCOUNTING_ACTUAL] == 0.375
    assert sidecar.consumed() == pytest.approx(0.375)
    assert sidecar.metric("genops_budget_reservations_expired_total") == 1
    assert sidecar.metric("genops_budget_reconciliations_total", {"status": "incomplete"}) == 1


def test_tokens_are_priced_and_bad_requests_refused(sidecar):
    now = time.time()
    request = ReservationRequest(*ids(0), ATTRIBUTION, "gpt-4o", "openai", estimated_input_tokens=1000)
    decision = sidecar.book.reserve(request, now)
    assert decision.result == gs.ALLOWED and 0 < decision.reserved < 0.1
    for bad in (
        ReservationRequest("xyz", ids(1)[1], ATTRIBUTION, estimated_usd=0.1),
        ReservationRequest("0" * 32, ids(1)[1], ATTRIBUTION, estimated_usd=0.1),
        ReservationRequest(*ids(1), {"squad": "ml"}, estimated_usd=0.1),
        ReservationRequest(*ids(1), ATTRIBUTION, estimated_usd=float("nan")),
        ReservationRequest(*ids(1), ATTRIBUTION, "no-such-model", estimated_input_tokens=10),
    ):
        with pytest.raises(ReservationError):
            sidecar.book.reserve(bad, now)


class _Processing:
    def __init__(self, reader) -> None:
        self.reader = reader

    def budget_reader(self):
        return self.reader


def test_http_reservations_are_posts_with_a_json_body(sidecar):
    import urllib.error
    import urllib.request

    from processor.config import HttpConfig
    from processor.transport.http_server import MAX_BODY_BYTES
    from processor.transport.server import ProbeServer, Readiness, reservation_routes

    config = SidecarConfig(http=HttpConfig(listen="127.0.0.1:0"))
    routes = reservation_routes(_Processing(sidecar.stage.budget_status), config, sidecar.registry)
    probes = ProbeServer(config.http, lambda: sidecar.registry, Readiness(True), {}, routes).start()

    def call(path: str, body: bytes | None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{probes.port}{path}", data=body)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        trace_id, span_id = ids(0)
        asked = {"trace_id": trace_id, "span_id": span_id, "attribution": ATTRIBUTION, "estimated_usd": 0.5}
        status, body = call("/v1/reservations", json.dumps(asked).encode())
        assert status == 200 and json.loads(body)["result"] == gs.ALLOWED, body
        assert call("/v1/reservations", None)[0] == 405  # GET
        assert call("/metrics", b"{}")[0] == 405  # POST where only GET is served
        assert call("/v1/reservations", b"not json")[0] == 400
        assert call("/v1/reservations", json.dumps({**asked, "extra": 1}).encode())[0] == 400
        assert call("/v1/reservations/release", json.dumps({"trace_id": trace_id}).encode())[0] == 400
        assert call("/v1/reservations", json.dumps({**asked, "ttl_seconds": True}).encode())[0] == 400
        assert call("/v1/reservations", b" " * (MAX_BODY_BYTES + 1))[0] == 413
        status, body = call("/v1/reservations/release", json.dumps({"trace_id": trace_id, "span_id": span_id}).encode())
        assert (status, json.loads(body)) == (200, {"released": True})
    finally:
        probes.stop()
        forget_book(book_for(config, sidecar.stage.budget_status, sidecar.registry))


def test_a_reserved_span_without_a_cost_is_charged_its_reservation_once(sidecar):
    now = time.time()
    assert sidecar.reserve(ids(0), 0.5, now).result == gs.ALLOWED
    spans = [llm_span(ids(0), None, int(now * 1e9))]
    for _ in range(2):  # and the Collector's retry
        changes = sidecar.send(spans, now + 1)
        assert changes.set_attributes[gs.ACCOUNTING_INCOMPLETE].to_list() == [True]
        settled = next(e for e in changes.events if e.name == gs.EVENT_BUDGET_RECONCILIATION)
        assert settled.attributes[gs.ACCOUNTING_INCOMPLETE_REASON] == INCOMPLETE_NO_ACTUAL
        assert gs.ACCOUNTING_ACTUAL not in settled.attributes
        assert sidecar.consumed() == pytest.approx(0.5)


def test_two_stores_on_one_state_never_over_commit(tmp_path, shared_store_settings):
    """Two sidecars' books (their own connections) and 8 threads reserving at once."""
    from concurrent.futures import ThreadPoolExecutor

    first, second = Sidecar(tmp_path, shared_store_settings), Sidecar(tmp_path, shared_store_settings)
    try:
        now = time.time()

        def gateway(client: int) -> int:
            book = (first, second)[client % 2]
            return sum(book.reserve(ids(client * 100 + n), 0.0625, now).result == gs.ALLOWED for n in range(5))

        with ThreadPoolExecutor(8) as pool:
            allowed = sum(pool.map(gateway, range(8)))
        assert allowed == int(LIMIT / 0.0625)  # 16 of 40: exactly full
    finally:
        first.close()
        second.close()


def test_a_corrupt_state_file_answers_unavailable_until_moved_away(tmp_path):
    from processor.stages.policy.reservation_store import SqliteReservations
    from processor.stages.policy.reservations import http_reserve

    path = tmp_path / "budgets.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    sidecar = Sidecar(tmp_path, {"state_backend": "sqlite", "state_path": str(path)})
    try:
        assert isinstance(sidecar.book.store, SqliteReservations)
        trace_id, span_id = ids(0)
        body = json.dumps({"trace_id": trace_id, "span_id": span_id, "estimated_usd": 0.1}).encode()
        assert http_reserve(sidecar.book, body)[0] == 503
        # The stage passes the batch, unreconciled.
        assert sidecar.send([llm_span(ids(0), 0.1, time.time_ns())], time.time()).set_attributes
        path.rename(tmp_path / "budgets.sqlite.corrupt")
        status, answer, _ = http_reserve(sidecar.book, body)
        assert status == 200 and json.loads(answer)["result"] == gs.ALLOWED
    finally:
        sidecar.close()


def test_grpc_reserve_and_release_in_one_process_with_the_memory_store(tmp_path):
    import grpc

    from processor.protos import budget_pb2, budget_pb2_grpc
    from tests.support.otlp_export import export_traces
    from tests.support.otlp_sink import OtlpSink
    from tests.support.sidecar_runner import RunningSidecar

    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    config = PolicyConfig(enabled=True, policy_file=str(policy_file), state_backend="memory")
    stage = build_policy_stage(config, CollectorRegistry())
    sink = OtlpSink().start()
    sidecar = RunningSidecar(sink.endpoint, [stage]).start()
    channel = sidecar.channel()
    try:
        budgets = budget_pb2_grpc.BudgetServiceStub(channel)

        def reserve(awu: tuple[str, str], usd: float) -> budget_pb2.ReserveResponse:
            request = budget_pb2.ReserveRequest(
                trace_id=awu[0], span_id=awu[1], attribution=ATTRIBUTION, estimated_usd=usd
            )
            return budgets.Reserve(request, timeout=10)

        with pytest.raises(grpc.RpcError) as refused:
            reserve(("nothex", ids(0)[1]), 0.5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reserve(ids(0), 0.5).result == gs.ALLOWED
        blocked = reserve(ids(1), 0.6)
        assert (blocked.result, blocked.reason_code, blocked.remaining) == (
            gs.BLOCKED,
            gs.BUDGET_RESERVATION_FAILED,
            0.5,
        )
        released = budgets.Release(budget_pb2.ReleaseRequest(trace_id=ids(0)[0], span_id=ids(0)[1]), timeout=10)
        assert released.released
        assert reserve(ids(1), 0.6).result == gs.ALLOWED
        export_traces(channel, trace_request([llm_span(ids(1), 0.25, time.time_ns())]))
        (received,) = sink.spans()
        assert received.attributes[gs.ACCOUNTING_RESERVED] == 0.6
        assert received.attributes[gs.ACCOUNTING_ACTUAL] == 0.25
        # The hold is gone, the actual spent: 0.75 left.
        assert reserve(ids(2), 0.75).result == gs.ALLOWED
    finally:
        channel.close()
        sidecar.stop()
        sink.stop()


def test_redis_down_answers_unavailable_and_spans_pass_then_reconcile_when_it_is_back(tmp_path):
    from processor.stages.policy.reservations import http_reserve

    port = free_port()
    (tmp_path / "redis").mkdir()
    process = start_redis(port, tmp_path / "redis")
    settings = {"state_backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0"}
    sidecar = Sidecar(tmp_path, {**settings, "state_path": str(tmp_path / "state" / "budgets.sqlite")})
    try:
        now = time.time()
        assert sidecar.reserve(ids(0), 0.5, now).result == gs.ALLOWED
        process.kill()
        process.wait()
        trace_id, span_id = ids(1)
        body = json.dumps({"trace_id": trace_id, "span_id": span_id, "estimated_usd": 0.1}).encode()
        assert http_reserve(sidecar.book, body)[0] == 503
        spans = [llm_span(ids(0), 0.25, int(now * 1e9))]
        # The batch passes at once with the stage's other changes (its charge kept for later).
        changes = sidecar.send(spans, now + 1)
        assert changes.set_attributes[gs.POLICY_RESULT].to_list() == [gs.WARNING]  # the advisory budget
        assert gs.ACCOUNTING_RESERVED not in changes.set_attributes
        process = start_redis(port, tmp_path / "redis")  # appendonly: the hold is still there
        reconciliation = sidecar.stage.reconciliation
        reconciliation._failing_until = time.monotonic()  # the retry pause (5 s) over
        # The guarded store notices the server is back in its own time; then the Collector's
        # retry of the batch reconciles it.
        deadline = time.monotonic() + 20
        while not sidecar.stage.store.up:
            assert time.monotonic() < deadline, "the store never came back"
            time.sleep(0.1)
        again = sidecar.send(spans, now + 2)
        assert again.set_attributes[gs.ACCOUNTING_RESERVED].to_list() == [0.5]
    finally:
        sidecar.close()
        process.kill()
        process.wait()
