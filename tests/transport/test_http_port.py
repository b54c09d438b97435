"""The sidecar's HTTP port and budget API as a real `serve` process: the bearer token, and a
bounded server that idle connections cannot fill with threads."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import grpc
import pytest

from tests.support.http_sidecar import TOKEN, Sidecar, get


@pytest.fixture
def guarded(tmp_path):
    with Sidecar(tmp_path, GENOPS_BUDGET_API_TOKEN=TOKEN) as sidecar:
        yield sidecar


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-of-some-length", f"Basic {TOKEN}", TOKEN])
def test_http_budgets_without_the_token_are_refused(guarded, authorization):
    status, headers, body = get(guarded.url("/v1/budgets?team=ml"), authorization)
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert b"ml-daily" not in body


def test_http_budgets_with_the_token_answer(guarded):
    status, _, body = get(guarded.url("/v1/budgets?team=ml"), f"Bearer {TOKEN}")
    assert status == 200
    assert b"ml-daily" in body


def test_probes_and_metrics_stay_open_when_the_budget_api_has_a_token(guarded):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert get(guarded.url(path))[0] == 200, path


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer nope-nope-nope-nope"),)])
def test_grpc_budget_service_without_the_token_is_unauthenticated(guarded, metadata):
    with pytest.raises(grpc.RpcError) as failure:
        guarded.budget_status(metadata)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_budget_service_with_the_token_answers(guarded):
    answer = guarded.budget_status((("authorization", f"Bearer {TOKEN}"),))
    assert [b.name for b in answer.budgets] == ["ml-daily"]


def test_without_a_token_the_budget_api_is_open_and_says_so(tmp_path):
    with Sidecar(tmp_path) as sidecar:
        assert get(sidecar.url("/v1/budgets?team=ml"))[0] == 200
        assert [b.name for b in sidecar.budget_status().budgets] == ["ml-daily"]
    assert "budget API is open" in sidecar.stderr


def test_idle_connections_do_not_grow_threads_and_probes_still_answer(tmp_path):
    with Sidecar(tmp_path, GENOPS_HTTP_MAX_CONNECTIONS="50") as sidecar:
        host, port = sidecar.http.rsplit(":", 1)
        before = sidecar.threads()
        idle = []
        try:
            for _ in range(300):
                connection = socket.create_connection((host, int(port)), timeout=10)
                idle.append(connection)
            # Half-sent requests too: a slow client must not hold a handler thread either.
            for connection in idle[::3]:
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert get(sidecar.url("/healthz"))[0] == 200
            assert get(sidecar.url("/readyz"))[0] == 200
            # The handler pool is fixed (4 threads by default) whatever the number of connections.
            assert sidecar.threads() <= before + 8
        finally:
            for connection in idle:
                connection.close()


def test_a_connection_that_stays_idle_is_closed(tmp_path):
    with Sidecar(tmp_path, GENOPS_HTTP_IDLE_TIMEOUT_SECONDS="1") as sidecar:
        host, port = sidecar.http.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=60) as connection:
            # recv returns b"" once the server closes; a server without idle timeout never does and
            # the 60 s socket timeout fails the test.
            assert connection.recv(1) == b""


def test_http_port_answers_405_to_other_methods(tmp_path):
    with Sidecar(tmp_path) as sidecar:
        request = urllib.request.Request(sidecar.url("/healthz"), data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(request, timeout=10)
        assert failure.value.code == 405
