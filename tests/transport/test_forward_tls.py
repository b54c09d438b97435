"""Forwarding to a downstream that requires TLS, and mutual TLS, with certificates made for the test."""

from __future__ import annotations

import grpc
import pytest
import trustme

from processor.config import DownstreamConfig, TlsConfig
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_export import export_traces
from tests.support.otlp_sink import OtlpSink
from tests.support.sidecar_runner import RunningSidecar


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, client_ca: bytes | None = None) -> tuple[bytes, bytes, bytes | None]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return chain, cert.private_key_pem.bytes(), client_ca


def send_through(sink: OtlpSink, tls: TlsConfig) -> None:
    sidecar = RunningSidecar(sink.endpoint, downstream_config=DownstreamConfig(tls=tls)).start()
    try:
        with sidecar.channel() as channel:
            export_traces(channel, trace_request([span()]))
    finally:
        sidecar.stop()


def test_spans_are_forwarded_over_tls_checked_against_the_configured_ca(ca, tmp_path):
    sink = OtlpSink(tls=server_tls(ca)).start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        send_through(sink, TlsConfig(enabled=True, ca_file=str(ca_file)))
        assert len(sink.spans()) == 1
    finally:
        sink.stop()


def test_a_downstream_certificate_from_another_ca_is_refused_and_reported_unavailable(ca, tmp_path):
    sink = OtlpSink(tls=server_tls(ca)).start()
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    try:
        with pytest.raises(grpc.RpcError) as failure:
            send_through(sink, TlsConfig(enabled=True, ca_file=str(other)))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert sink.spans() == []
    finally:
        sink.stop()


def test_mutual_tls_presents_the_configured_client_certificate(ca, tmp_path):
    sink = OtlpSink(tls=server_tls(ca, client_ca=ca.cert_pem.bytes())).start()
    client = ca.issue_cert("genops-sidecar")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    try:
        send_through(
            sink,
            TlsConfig(enabled=True, ca_file=str(paths["ca"]), cert_file=str(paths["cert"]), key_file=str(paths["key"])),
        )
        assert len(sink.spans()) == 1
    finally:
        sink.stop()
