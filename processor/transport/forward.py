"""The downstream OTLP/gRPC client: sends processed request bytes on, returns the answer bytes.

Requests and responses stay serialised: the sidecar has nothing to add to the response, so the
downstream's partial-success answer reaches the Collector exactly as it was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

from processor.config import DownstreamConfig

METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}


@dataclass(frozen=True)
class DownstreamError(Exception):
    code: grpc.StatusCode
    details: str

    def __str__(self) -> str:
        return f"downstream answered {self.code.name}: {self.details}"


def _target(endpoint: str) -> str:
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :]
    return endpoint


class Forwarder:
    def __init__(self, config: DownstreamConfig) -> None:
        self.config = config
        mib = 1024 * 1024
        options: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", config.max_send_message_size_mib * mib),
            ("grpc.max_receive_message_length", 16 * mib),
        ]
        compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression
        target = _target(config.endpoint)
        if config.tls.enabled or config.endpoint.startswith("https://"):
            tls = config.tls
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.ca_file),
                private_key=_read(tls.key_file),
                certificate_chain=_read(tls.cert_file),
            )
            if tls.server_name_override:
                options.append(("grpc.ssl_target_name_override", tls.server_name_override))
            self._channel = aio.secure_channel(target, credentials, options=options, compression=compression)
        else:
            self._channel = aio.insecure_channel(target, options=options, compression=compression)
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self._calls = {
            signal: self._channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            for signal, method in METHODS.items()
        }

    async def export(self, signal: str, payload: bytes) -> bytes:
        try:
            return await self._calls[signal](
                payload, timeout=self.config.timeout_seconds, metadata=self._metadata, wait_for_ready=False
            )
        except aio.AioRpcError as exc:
            raise DownstreamError(exc.code(), exc.details() or "") from exc

    async def close(self) -> None:
        await self._channel.close()


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None
