"""The plain HTTP port (probes, /metrics, budget status): a fixed pool of handler threads.

waitress reads each request without a thread (its event loop buffers it until complete) and hands
only complete requests to `threads` handler threads, so idle or slow connections cost a socket,
not a thread. Connections idle longer than the idle timeout are closed, and at the connection
limit the longest-idle one is closed to make room: a crowd of idle clients can neither grow the
thread count nor lock out the kubelet's probes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer

from processor.config import HttpConfig


@dataclass(frozen=True)
class HttpRequest:
    path: str  # with the query string, as sent
    authorization: str = ""
    method: str = "GET"
    body: bytes = b""


# A POST body larger than this is refused unread (the reservation API's bodies are < 1 kB).
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[HttpRequest], HttpResponse]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS |= {413: "Content Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class _EvictingServer(TcpWSGIServer):
    """At the connection limit, closes the longest-idle connection instead of refusing new ones."""

    def readable(self) -> bool:
        if len(self._map) >= self.adj.connection_limit:
            idle = [channel for channel in self.active_channels.values() if not channel.requests]
            if idle:
                min(idle, key=lambda channel: channel.last_activity).will_close = True
        return super().readable()


class BoundedHttpServer:
    """Serves `handler` for GET (and POST) requests on `config.listen` from a background thread."""

    def __init__(self, config: HttpConfig, handler: Handler) -> None:
        host, _, port = config.listen.rpartition(":")
        adjustments = Adjustments(
            host=host.strip("[]") or "0.0.0.0",
            port=int(port),
            threads=config.threads,
            connection_limit=config.max_connections,
            channel_timeout=config.idle_timeout_seconds,
            # How often idle connections are looked for; a fraction of the timeout keeps it close.
            cleanup_interval=max(1, config.idle_timeout_seconds // 4),
            ident="genops-sidecar",
            expose_tracebacks=False,
        )
        # waitress logs "queue depth" warnings per busy moment and our handler logs nothing.
        logging.getLogger("waitress").setLevel(logging.ERROR)
        try:
            self._server = _EvictingServer(_wsgi(handler), adj=adjustments)
        except OSError as exc:
            raise OSError(f"http.listen {config.listen}: cannot listen ({exc.strerror or exc})") from None
        self.port: int = self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, name="probe-http", daemon=True)

    def start(self) -> BoundedHttpServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            # Closed from the event loop's own thread: its map is not thread-safe.
            self._server.trigger.pull_trigger(self._close_all)
            self._thread.join(timeout)
        else:
            self._close_all()
        self._server.task_dispatcher.shutdown()

    def _close_all(self) -> None:
        for dispatcher in list(self._server._map.values()):
            dispatcher.close()


def _wsgi(handler: Handler):
    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        length = environ.get("CONTENT_LENGTH") or "0"
        if method not in ("GET", "HEAD", "POST"):
            response = HttpResponse(405, b"method not allowed\n", headers=(("Allow", "GET, POST"),))
        elif method == "POST" and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            response = HttpResponse(413, b"request body too large\n")
        else:
            query = environ.get("QUERY_STRING", "")
            path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
            body = environ["wsgi.input"].read(int(length)) if method == "POST" else b""
            authorization = environ.get("HTTP_AUTHORIZATION", "")
            asked = HttpRequest(path, authorization, "POST" if method == "POST" else "GET", body)
            response = handler(asked)
        reason = _REASONS.get(response.status, "")
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {reason}", [*headers, *response.headers])
        return [response.body]

    return app
