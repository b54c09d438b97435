"""The lean OTLP view is wire-compatible with opentelemetry-proto and matches its generated code."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from processor.protos import otlp_lean_pb2 as lean
from tests.support.otlp_builders import log_request, span, trace_request

ROOT = Path(__file__).resolve().parents[2]


def test_untouched_requests_round_trip_without_loss():
    # Unknown fields are re-emitted after the declared ones, so bytes may be reordered; the
    # message must be the same. (Batches no stage changed are forwarded as the original bytes.)
    request = trace_request(
        [span(attributes={"a": 1, "b": [1, "x"], "c": {"k": True}}, events=[("e", {"q": "v"})]) for _ in range(3)]
    )
    raw = lean.ExportTraceServiceRequest.FromString(request.SerializeToString()).SerializeToString()
    assert trace_pb.ExportTraceServiceRequest.FromString(raw) == request
    logs = log_request([{"nested": ["body"]}, "plain"])
    raw = lean.ExportLogsServiceRequest.FromString(logs.SerializeToString()).SerializeToString()
    assert logs_pb.ExportLogsServiceRequest.FromString(raw) == logs


def test_edits_through_the_lean_view_keep_every_other_field():
    request = trace_request([span(attributes={"gen_ai.request.model": "gpt-4o"})])
    view = lean.ExportTraceServiceRequest.FromString(request.SerializeToString())
    edited = view.resource_spans[0].scope_spans[0].spans[0]
    edited.attributes[0].value.string_value = "gpt-4o-mini"
    added = edited.attributes.add()
    added.key = "genops.cost.total"
    added.value.double_value = 0.5
    result = trace_pb.ExportTraceServiceRequest.FromString(view.SerializeToString())
    expected = trace_pb.ExportTraceServiceRequest()
    expected.CopyFrom(request)
    original = expected.resource_spans[0].scope_spans[0].spans[0]
    original.attributes[0].value.string_value = "gpt-4o-mini"
    original.attributes.add(key="genops.cost.total").value.double_value = 0.5
    assert result == expected


def test_log_body_edits_keep_the_record():
    request = log_request(["secret"])
    view = lean.ExportLogsServiceRequest.FromString(request.SerializeToString())
    view.resource_logs[0].scope_logs[0].log_records[0].body.string_value = "****"
    result = logs_pb.ExportLogsServiceRequest.FromString(view.SerializeToString())
    record = result.resource_logs[0].scope_logs[0].log_records[0]
    assert record.body.string_value == "****"
    assert record.trace_id == request.resource_logs[0].scope_logs[0].log_records[0].trace_id


def test_committed_generated_code_matches_the_proto_sources(tmp_path):
    subprocess.run(["bash", str(ROOT / "proto" / "generate.sh"), str(tmp_path)], check=True)
    committed = ROOT / "processor" / "protos"
    generated = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".py", ".pyi"))
    assert generated, "generate.sh produced nothing"
    mismatched = [name for name in generated if not filecmp.cmp(tmp_path / name, committed / name, shallow=False)]
    assert not mismatched, f"run proto/generate.sh: {mismatched} differ ({sys.executable})"
