"""Precision of the default rules on ordinary telemetry: what a plain HTTP, DB or GenAI span carries
that is not personal data stays as sent, on the native path and the polars path alike."""

from __future__ import annotations

import pytest

from processor.stages.redaction.stage import COUNT_KEY, DETECTED_KEY
from tests.support.otlp_builders import span, trace_request
from tests.support.otlp_sink import attributes_to_dict
from tests.support.pipeline_runs import run_traces, spans_of
from tests.support.redaction_stages import default_stage

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36"
)


def redacted(attributes: dict, resource: dict | None = None) -> dict:
    request = trace_request([span(attributes=attributes)], resource=resource or {"service.name": "svc"})
    (out,) = spans_of(run_traces(default_stage(), request))
    return attributes_to_dict(out.attributes)


def test_peer_server_and_host_addresses_stay_but_a_client_address_is_masked(engine):
    got = redacted(
        {
            "network.peer.address": "10.0.3.17",
            "server.address": "10.0.4.2",
            "network.local.address": "fd00::17",
            "net.sock.peer.addr": "192.168.1.9",
            "client.address": "203.0.113.50",
            "http.client_ip": "198.51.100.7",
            "db.system": "postgresql",
        },
        resource={"service.name": "svc", "host.ip": "10.0.0.5", "k8s.pod.ip": "10.244.1.3"},
    )
    assert got["network.peer.address"] == "10.0.3.17"
    assert got["server.address"] == "10.0.4.2"
    assert got["network.local.address"] == "fd00::17"
    assert got["net.sock.peer.addr"] == "192.168.1.9"
    assert got["client.address"] == "[REDACTED:ipv4]"
    assert got["http.client_ip"] == "[REDACTED:ipv4]"


def test_a_user_agent_version_is_not_an_address_but_an_address_next_to_it_is(engine):
    got = redacted({"user_agent.original": CHROME, "note": "from 198.51.100.23 with Edg/120.0.0.0"})
    assert got["user_agent.original"] == CHROME
    assert got["note"] == "from [REDACTED:ipv4] with Edg/120.0.0.0"


@pytest.mark.parametrize(
    "code",
    ["evens = arr[1::2]", "data[::2]", "df.iloc[::10]", "rows[10::20]", "m[:, ::3]", "x[::-1]", "s[a::b]"],
)
def test_python_slices_in_a_prompt_are_not_ipv6(engine, code):
    assert redacted({"note": code})["note"] == code


@pytest.mark.parametrize("address", ["fe80::1", "2001:db8::1", "2606:4700:4700::1111", "[2001:db8::7]:443"])
def test_ipv6_addresses_a_person_writes_are_still_masked(engine, address):
    got = redacted({"note": f"connect {address} now"})["note"]
    assert "[REDACTED:ipv6]" in got and address.strip("[]").split("]")[0] not in got


def test_key_rules_mask_message_content_but_not_its_role_or_finish_reason(engine):
    got = redacted(
        {
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "my secret plan",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.finish_reason": "stop",
            "gen_ai.completion.0.content": "here it is",
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "be terse",
            "llm.output_messages.0.message.role": "assistant",
        }
    )
    assert got["gen_ai.prompt.0.role"] == "user"
    assert got["gen_ai.completion.0.role"] == "assistant"
    assert got["gen_ai.completion.0.finish_reason"] == "stop"
    assert got["llm.input_messages.0.message.role"] == "system"
    assert got["llm.output_messages.0.message.role"] == "assistant"
    for key in ("gen_ai.prompt.0.content", "gen_ai.completion.0.content", "llm.input_messages.0.message.content"):
        assert got[key] == "[REDACTED:genai_content]"


def test_a_role_key_still_meets_the_detectors(engine):
    got = redacted({"gen_ai.prompt.0.role": "user jane@example.com"})
    assert got["gen_ai.prompt.0.role"] == "user [REDACTED:email]"


def test_detected_counts_findings_of_detectors_not_prompts_masked_by_key(engine):
    request = trace_request(
        [
            span(attributes={"gen_ai.prompt": "hello", "gen_ai.completion": "hi"}),
            span(attributes={"gen_ai.prompt": "hello", "note": "mail ada@example.com"}),
            span(attributes={"http.route": "/health"}),
        ],
        resource={"service.name": "svc"},
    )
    spans = [attributes_to_dict(s.attributes) for s in spans_of(run_traces(default_stage(), request))]
    assert [s.get(COUNT_KEY) for s in spans] == [2, 2, None]
    assert [s.get(DETECTED_KEY) for s in spans] == [None, 1, None]


def test_a_finding_in_a_resource_is_detected_on_every_span_under_it(engine):
    request = trace_request(
        [span(attributes={"gen_ai.prompt": "hello"}), span(attributes={})],
        resource={"service.name": "svc", "owner": "ops@example.com"},
    )
    spans = [attributes_to_dict(s.attributes) for s in spans_of(run_traces(default_stage(), request))]
    assert [s.get(COUNT_KEY) for s in spans] == [2, 1]
    assert [s.get(DETECTED_KEY) for s in spans] == [1, 1]
