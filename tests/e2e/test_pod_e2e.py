"""The shipped kustomization's pod, from the images k8s/image/build.sh makes, run by podman.

Renders k8s/, plays the DaemonSet's pod (tests/support/kube_pod.py says what stands in for the kubelet),
sends spans with the OpenTelemetry SDK into the Collector's OTLP port and checks at a sink on
127.0.0.1 that they come back priced and redacted; swaps the pricing ConfigMap's content the kubelet
way and sees the new prices without a restart; checks the probes from the host; then stops the pod
in the kubelet's order and checks that nothing sent was lost.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.stages.cost.stage import COST_TOTAL, COST_VERSION, CostStage
from processor.stages.redaction.stage import COUNT_KEY
from tests.support.collector_harness import free_port
from tests.support.cost_helpers import process
from tests.support.kube_pod import REPO, KubePod, write_configmap_dir
from tests.support.kustomize import COLLECTOR, DEFAULT, RETURN_COLLECTOR, SIDECAR, render
from tests.support.otlp_sink import OtlpSink

pytestmark = pytest.mark.pod

PROMPT = "my card is 4111 1111 1111 1111 and my password is hunter2"
GEN_AI = {
    "gen_ai.system": "openai",
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 250,
}
REPRICED_MODEL = "gpt-4o-mini"


def tools_or_fail() -> None:
    missing = [tool for tool in ("podman", "runc", "mmdebstrap", "kubectl") if shutil.which(tool) is None]
    if missing:
        message = f"the pod test needs {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    tools_or_fail()
    built = subprocess.run(["bash", str(REPO / "k8s" / "image" / "build.sh")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    sidecar, otelcol = built.stdout.split()
    return {SIDECAR: sidecar, COLLECTOR: otelcol, RETURN_COLLECTOR: otelcol}


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_http_ok(url: str, timeout: float, pod: KubePod) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_status(url) == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered 200\n{pod.logs(SIDECAR)[-3000:]}\n{pod.logs(COLLECTOR)[-3000:]}")


class Pod:
    """The running pod with its ports on this host and the sink it exports to."""

    def __init__(self, kube: KubePod, ports: dict[int, int], sink: OtlpSink) -> None:
        self.kube, self.ports, self.sink = kube, ports, sink

    def otlp_endpoint(self) -> str:
        return f"127.0.0.1:{self.ports[4317]}"

    def wait_sidecars_started(self) -> None:
        """Each native sidecar's startup probe, in order, within its failureThreshold x periodSeconds."""
        for name in self.kube.sidecars:
            startup = self.kube.container(name)["startupProbe"]
            seconds = startup["periodSeconds"] * startup["failureThreshold"]
            wait_http_ok(self.probe_url(name, "startupProbe"), seconds, self.kube)

    def probe_url(self, container_name: str, probe: str) -> str:
        get = self.kube.container(container_name)[probe]["httpGet"]
        return f"http://127.0.0.1:{self.ports[get['port']]}{get['path']}"


@pytest.fixture(scope="module")
def pod(images, tmp_path_factory):
    sink = OtlpSink().start()
    manifest_ports = (4317, 4318, 8888, 13133, 9477, 4417, 4418, 4419, 4427, 4428, 8889, 13134)
    ports = {port: free_port() for port in manifest_ports}
    here = {port: f"127.0.0.1:{p}" for port, p in ports.items()}
    overrides = {
        COLLECTOR: {
            "GENOPS_OTELCOL_APPS_GRPC": here[4317],
            "GENOPS_OTELCOL_APPS_HTTP": here[4318],
            "GENOPS_OTELCOL_HEALTH": here[13133],
            "GENOPS_OTELCOL_METRICS_HOST": "127.0.0.1",
            "GENOPS_OTELCOL_METRICS_PORT": str(ports[8888]),
            "GENOPS_OTELCOL_RETURN_GRPC": here[4419],
            "GENOPS_BACKEND_ENDPOINT": here[4419],
            "GENOPS_SIDECAR_ENDPOINT": here[4417],
            # Long enough that the stop test's spans are still in the batch when SIGTERM comes.
            "GENOPS_OTELCOL_BATCH_TIMEOUT": "5s",
        },
        RETURN_COLLECTOR: {
            "GENOPS_OTELCOL_APPS_GRPC": here[4427],
            "GENOPS_OTELCOL_APPS_HTTP": here[4428],
            "GENOPS_OTELCOL_HEALTH": here[13134],
            "GENOPS_OTELCOL_METRICS_HOST": "127.0.0.1",
            "GENOPS_OTELCOL_METRICS_PORT": str(ports[8889]),
            "GENOPS_OTELCOL_RETURN_GRPC": here[4418],
            "GENOPS_SIDECAR_ENDPOINT": here[4417],
            "GENOPS_BACKEND_ENDPOINT": sink.endpoint,
            "GENOPS_BACKEND_INSECURE": "true",
        },
        SIDECAR: {
            "GENOPS_SERVER_LISTEN": here[4417],
            "GENOPS_DOWNSTREAM_ENDPOINT": here[4418],
            "GENOPS_HTTP_LISTEN": here[9477],
        },
    }
    kube = KubePod(render(DEFAULT), tmp_path_factory.mktemp("pod"), images, overrides)
    kube.remove()
    try:
        running = Pod(kube, ports, sink)
        kube.play(running.wait_sidecars_started)
        wait_http_ok(running.probe_url(COLLECTOR, "readinessProbe"), 60, kube)
        yield running
    finally:
        print(kube.logs(SIDECAR)[-5000:])
        print(kube.logs(COLLECTOR)[-5000:])
        kube.remove()
        sink.stop()


def send_spans(endpoint: str, count: int, attributes: dict[str, object]) -> set[str]:
    provider = TracerProvider(resource=Resource.create({"service.name": "pod-e2e"}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=64, schedule_delay_millis=50))
    tracer = provider.get_tracer("genops.pod")
    sent = set()
    for i in range(count):
        with tracer.start_as_current_span(f"chat {i}") as span:
            span.set_attributes(attributes)
            sent.add(format(span.get_span_context().span_id, "016x"))
    assert provider.force_flush(timeout_millis=20000), "the Collector did not take the spans"
    provider.shutdown()
    return sent


def received(sink: OtlpSink, ids: set[str], timeout: float = 60) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = {s.span.span_id.hex(): s.attributes for s in sink.spans() if s.span.span_id.hex() in ids}
        if len(got) == len(ids) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def expected_cost(tables: Path) -> float:
    stage = CostStage(CostConfig(pricing_file=str(tables)), CollectorRegistry(), watch=False)
    _, (written,) = process(stage, [GEN_AI], day=dt.datetime.now(dt.UTC).date().isoformat())
    return written[COST_TOTAL]


def test_spans_come_back_priced_and_redacted(pod):
    ids = send_spans(pod.otlp_endpoint(), 40, {**GEN_AI, "gen_ai.prompt": PROMPT})
    got = received(pod.sink, ids)
    assert len(got) == len(ids)
    cost = expected_cost(REPO / "pricing_tables")
    assert cost > 0
    for attributes in got.values():
        assert attributes[COST_TOTAL] == pytest.approx(cost)
        assert PROMPT not in str(attributes) and "4111" not in str(attributes)
        assert attributes[COUNT_KEY] >= 1


def test_every_container_runs_non_root_on_a_read_only_root_filesystem(pod):
    user = str(pod.kube.template["spec"]["securityContext"]["runAsUser"])
    for c in pod.kube.spec["containers"]:
        applied = pod.kube.runtime_config(c["name"])
        assert c["securityContext"]["readOnlyRootFilesystem"] and applied["read_only"] is True, c["name"]
        assert applied["user"].partition(":")[0] == user != "0", c["name"]
        assert pod.kube.state(c["name"])["Running"], c["name"]


def test_probes_answer_on_the_ports_the_manifests_name(pod):
    sidecar = pod.kube.container(SIDECAR)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert sidecar[probe]["httpGet"]["port"] == 9477
        assert http_status(pod.probe_url(SIDECAR, probe)) == 200, probe
    for name in (COLLECTOR, RETURN_COLLECTOR):
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in pod.kube.container(name):
                assert http_status(pod.probe_url(name, probe)) == 200, (name, probe)


def test_a_pricing_configmap_update_reprices_without_a_restart(pod, tmp_path):
    before = pod.kube.state(SIDECAR)
    files = pod.kube.configmap_files(next(v for v in pod.kube.template["spec"]["volumes"] if v["name"] == "pricing"))
    table = yaml.safe_load(files["openai.yaml"])
    table["version"] = "pod-test-repriced"
    (entry,) = [m for m in table["models"] if m["model"] == REPRICED_MODEL]
    entry["input"], entry["output"] = entry["input"] * 100, entry["output"] * 100
    files["openai.yaml"] = yaml.safe_dump(table, sort_keys=False)
    local = tmp_path / "tables"
    local.mkdir()
    for name, text in files.items():
        (local / name).write_text(text)
    new_cost = expected_cost(local)
    assert new_cost > expected_cost(REPO / "pricing_tables")

    write_configmap_dir(pod.kube.volume_dirs["pricing"], files, 10001, 10001)
    deadline = time.monotonic() + 90
    while True:
        ids = send_spans(pod.otlp_endpoint(), 1, GEN_AI)
        (attributes,) = received(pod.sink, ids).values()
        if attributes[COST_TOTAL] == pytest.approx(new_cost):
            break
        assert time.monotonic() < deadline, f"still priced at {attributes[COST_TOTAL]} ({attributes[COST_VERSION]})"
        time.sleep(1)
    after = pod.kube.state(SIDECAR)
    assert (after["Pid"], after["StartedAt"]) == (before["Pid"], before["StartedAt"]), "the sidecar restarted"


def test_stopping_the_pod_loses_nothing_in_flight(pod):
    # Spans the Collector has taken but not yet sent on when it is told to stop (its batch processor
    # holds them for GENOPS_OTELCOL_BATCH_TIMEOUT, 5 s here): the drain goes through the sidecar and
    # the return leg before it reaches the sink.
    ids = send_spans(pod.otlp_endpoint(), 500, GEN_AI)
    grace = pod.kube.template["spec"]["terminationGracePeriodSeconds"]
    took = pod.kube.stop(grace)
    assert all(seconds < grace for seconds in took.values()), took
    got = received(pod.sink, ids, timeout=5)
    assert len(got) == len(ids), f"{len(ids) - len(got)} of {len(ids)} spans lost on stop"
    assert all(a[COST_TOTAL] > 0 for a in got.values())
    for name in (COLLECTOR, SIDECAR, RETURN_COLLECTOR):
        assert pod.kube.state(name)["ExitCode"] == 0, pod.kube.logs(name)[-3000:]
