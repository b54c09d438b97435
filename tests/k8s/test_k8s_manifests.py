"""The Kubernetes manifests under k8s/: schema-valid, wired together, hardened, and in step with the repo.

Kustomize output is rendered with `kustomize build` (or `kubectl kustomize`, what `kubectl apply -k`
runs, where kustomize is not installed); the built-in objects are validated against the Kubernetes
OpenAPI schemas shipped by kubernetes-validate, and the Prometheus Operator objects, which those
schemas do not cover, structurally.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError

from processor.config import load_config
from processor.stages.policy.policy_file import load_policy_file
from tests.support.kustomize import COLLECTOR, DEFAULT, K8S, RETURN_COLLECTOR, SIDECAR, render

REPO = Path(__file__).resolve().parents[2]
# The oldest release the manifests support (native sidecars are on by default from 1.29) and the newest
# one kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
OPERATOR_API = "monitoring.coreos.com/v1"
CLUSTER_BUDGETS = "overlays/cluster-budgets"


def find(objects: tuple[dict, ...], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_spec(objects: tuple[dict, ...]) -> dict:
    return find(objects, "DaemonSet", "genops-otelcol")["spec"]["template"]["spec"]


def all_containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(spec: dict, name: str) -> dict:
    (found,) = [c for c in all_containers(spec) if c["name"] == name]
    return found


def env_of(c: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in c.get("env", []) if "value" in item}


def mount_path(c: dict, volume: str) -> str:
    (path,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume]
    return path


def configmaps_of_volume(spec: dict, volume: str) -> list[str]:
    """The ConfigMaps a volume mounts: one, or several projected into one directory."""
    (found,) = [v for v in spec["volumes"] if v["name"] == volume]
    if "configMap" in found:
        return [found["configMap"]["name"]]
    return [source["configMap"]["name"] for source in found["projected"]["sources"]]


def configmap_of_volume(spec: dict, volume: str) -> str:
    (found,) = configmaps_of_volume(spec, volume)
    return found


def validate(obj: dict) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# --- schema validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", [DEFAULT, CLUSTER_BUDGETS])
def test_every_rendered_builtin_object_passes_strict_schema_validation(kustomization):
    objects = render(kustomization)
    builtin = [o for o in objects if o["apiVersion"] != OPERATOR_API]
    assert {o["kind"] for o in builtin} >= {"Namespace", "ServiceAccount", "ConfigMap", "Service", "DaemonSet"}
    for obj in builtin:
        validate(obj)
    assert all(o["metadata"]["namespace"] == "genops" for o in objects if o["kind"] != "Namespace")


def test_every_plain_manifest_file_passes_schema_validation_without_kustomize():
    # Checked file by file too, so CI without kubectl still validates what it can.
    skipped = {"kustomization.yaml", "sidecar-redis-env.yaml", "servicemonitor.yaml", "prometheusrule.yaml"}
    files = [p for p in K8S.glob("*/*.yaml") if p.name not in skipped and p.parent.name in ("base", "redis")]
    assert len(files) >= 5
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            obj = copy.deepcopy(obj)
            obj["metadata"].setdefault("namespace", "genops")
            validate(obj)


def test_the_validator_rejects_a_misspelt_field():
    daemonset = copy.deepcopy(find(render(DEFAULT), "DaemonSet"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(ValidationError):
        validate(daemonset)


def test_servicemonitor_selects_the_metrics_service_and_its_ports():
    objects = render(DEFAULT)
    monitor = find(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == OPERATOR_API
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        o for o in objects if o["kind"] == "Service" and selector.items() <= o["metadata"].get("labels", {}).items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["genops-sidecar-metrics"]
    service_ports = {p["name"]: p for p in selected[0]["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} == {"metrics", "otelcol-metrics"}
    for endpoint in endpoints:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"])
    # The sidecar's /metrics port is what the Service sends the scrape to.
    sidecar_ports = {p["containerPort"] for p in container(pod_spec(objects), SIDECAR)["ports"]}
    assert service_ports["metrics"]["targetPort"] in sidecar_ports


def test_prometheusrule_is_a_well_formed_operator_object():
    rule = find(render(DEFAULT), "PrometheusRule")
    assert rule["apiVersion"] == OPERATOR_API
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for entry in group["rules"]:
            assert ("record" in entry) != ("alert" in entry)
            assert set(entry) <= {"record", "alert", "expr", "for", "labels", "annotations"}


def test_services_select_the_daemonset_pods_and_target_declared_ports():
    objects = render(DEFAULT)
    template = find(objects, "DaemonSet")["spec"]["template"]
    ports = {p["containerPort"] for c in all_containers(template["spec"]) for p in c.get("ports", [])}
    for service in (o for o in objects if o["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


# --- pod hardening and probes --------------------------------------------------------------------


def test_pod_runs_non_root_with_runtime_default_seccomp_and_no_token():
    spec = pod_spec(render(DEFAULT))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "genops-otelcol"
    assert "hostNetwork" not in spec
    assert all("hostPath" not in v for v in spec["volumes"])


@pytest.mark.parametrize("kustomization", [DEFAULT, CLUSTER_BUDGETS])
def test_every_container_is_locked_down_and_bounded(kustomization):
    for spec in (
        o["spec"]["template"]["spec"] for o in render(kustomization) if o["kind"] in ("DaemonSet", "StatefulSet")
    ):
        for c in all_containers(spec):
            context = c["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, c["name"]
            assert context["allowPrivilegeEscalation"] is False, c["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert (spec.get("securityContext", {}) | context)["runAsNonRoot"] is True, c["name"]
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) == {"cpu", "memory"}, c["name"]
            assert c["livenessProbe"] and c["readinessProbe"], c["name"]
            assert not re.search(r":latest$|^[^:]+$", c["image"]), f"{c['name']} image not pinned: {c['image']}"


def test_collector_image_is_the_pinned_contrib_release():
    assert container(pod_spec(render(DEFAULT)), COLLECTOR)["image"] == "otel/opentelemetry-collector-contrib:0.164.0"


def test_sidecar_is_a_native_sidecar_probed_on_healthz_and_readyz():
    sidecar = container(pod_spec(render(DEFAULT)), SIDECAR)
    # restartPolicy Always on an init container: started before and stopped after the Collector.
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    http_port = int(load_sidecar_config(sidecar).http.listen.rpartition(":")[2])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert sidecar[probe]["httpGet"]["port"] == http_port


# --- configuration wiring ------------------------------------------------------------------------


def load_sidecar_config(sidecar: dict, **extra_env: str):
    """The sidecar's config as the pod sees it: the shipped file plus the container's literal env."""
    env = env_of(sidecar) | extra_env
    assert env.pop("GENOPS_CONFIG") == "/etc/genops/config/sidecar.yaml"
    return load_config(K8S / "config" / "sidecar.yaml", environ=env)


def test_sidecar_config_listens_on_loopback_and_returns_to_the_collector():
    spec = pod_spec(render(DEFAULT))
    sidecar, collector = container(spec, SIDECAR), container(spec, COLLECTOR)
    config = load_sidecar_config(sidecar)
    collector_env = env_of(collector)
    assert config.server.listen.startswith("127.0.0.1:")
    assert collector_env["GENOPS_SIDECAR_ENDPOINT"] == config.server.listen
    assert env_of(container(spec, RETURN_COLLECTOR))["GENOPS_OTELCOL_RETURN_GRPC"] == config.downstream.endpoint
    assert collector_env["GENOPS_OTELCOL_RETURN_GRPC"] != config.downstream.endpoint
    assert config.downstream.endpoint.startswith("127.0.0.1:")
    assert config.http.listen == "0.0.0.0:9477"


def test_pricing_policy_and_state_paths_point_into_their_volumes():
    spec = pod_spec(render(DEFAULT))
    sidecar = container(spec, SIDECAR)
    config = load_sidecar_config(sidecar)
    assert config.cost.pricing_file == mount_path(sidecar, "pricing")
    assert str(Path(config.policy.policy_file).parent) == mount_path(sidecar, "policy")
    assert Path(config.policy.policy_file).name in find(render(DEFAULT), "ConfigMap", "genops-policy")["data"]
    assert str(Path(config.policy.state_path).parent) == mount_path(sidecar, "budget-state")
    assert config.policy.state_backend == "sqlite"
    (state_volume,) = [v for v in spec["volumes"] if v["name"] == "budget-state"]
    assert "emptyDir" in state_volume


def test_hot_reloaded_configmaps_are_mounted_as_directories_under_fixed_names():
    objects = render(DEFAULT)
    spec = pod_spec(objects)
    # subPath mounts never see the kubelet's ..data symlink swap, so no mount may use one.
    assert all("subPath" not in m for c in all_containers(spec) for m in c.get("volumeMounts", []))
    assert configmap_of_volume(spec, "policy") == "genops-policy"
    pricing = configmaps_of_volume(spec, "pricing")
    assert len(pricing) > 1 and all(name.startswith("genops-pricing-") for name in pricing)
    for name in ("genops-policy", *pricing):
        find(objects, "ConfigMap", name)


def test_start_time_configmaps_carry_a_content_hash_so_edits_roll_the_pods():
    objects = render(DEFAULT)
    spec = pod_spec(objects)
    for volume, base in (("collector-config", "genops-otelcol-config"), ("sidecar-config", "genops-sidecar-config")):
        name = configmap_of_volume(spec, volume)
        assert re.fullmatch(rf"{base}-[a-z0-9]{{10}}", name), name
        find(objects, "ConfigMap", name)


def test_collector_mounts_its_config_where_its_args_point():
    objects = render(DEFAULT)
    collector = container(pod_spec(objects), COLLECTOR)
    (config_arg,) = [a.removeprefix("--config=") for a in collector["args"] if a.startswith("--config=")]
    config_path = Path(config_arg)
    assert str(config_path.parent) == mount_path(collector, "collector-config")
    configmap = find(objects, "ConfigMap", configmap_of_volume(pod_spec(objects), "collector-config"))
    assert config_path.name in configmap["data"]


def env_default(value: str) -> str:
    """The default of a `${env:VAR:-default}` Collector setting, or the value itself."""
    match = re.fullmatch(r"\$\{env:\w+:-(.*)\}", str(value))
    return match.group(1) if match else str(value)


def test_collector_probes_and_ports_match_its_config():
    collector_config = yaml.safe_load((K8S / "config" / "otelcol-sidecar.yaml").read_text())
    collector = container(pod_spec(render(DEFAULT)), COLLECTOR)
    health_port = int(env_default(collector_config["extensions"]["health_check"]["endpoint"]).rpartition(":")[2])
    assert collector["livenessProbe"]["httpGet"]["port"] == health_port
    assert collector["readinessProbe"]["httpGet"]["port"] == health_port
    protocols = collector_config["receivers"]["otlp"]["protocols"]
    container_ports = {p["name"]: p["containerPort"] for p in collector["ports"]}
    assert int(env_default(protocols["grpc"]["endpoint"]).rpartition(":")[2]) == container_ports["otlp-grpc"]
    assert int(env_default(protocols["http"]["endpoint"]).rpartition(":")[2]) == container_ports["otlp-http"]
    # Apps reach the receivers through the Service, so they must not be bound to loopback.
    assert env_default(protocols["grpc"]["endpoint"]).startswith("0.0.0.0:")
    metrics_reader = collector_config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    assert int(env_default(metrics_reader["prometheus"]["port"])) == container_ports["otelcol-metrics"]
    # Every variable the Collector config reads without a default is set in the pod.
    text = (K8S / "config" / "otelcol-sidecar.yaml").read_text()
    required = set(re.findall(r"\$\{env:(\w+)\}", text))
    assert required <= env_of(collector).keys()


def test_cluster_budgets_overlay_points_every_sidecar_at_the_redis_service():
    objects = render(CLUSTER_BUDGETS)
    config = load_sidecar_config(container(pod_spec(objects), SIDECAR))
    assert config.policy.state_backend == "redis"
    redis_service = find(objects, "Service", "genops-redis")
    host_port = config.policy.redis_url.removeprefix("redis://").split("/")[0]
    assert host_port == f"genops-redis:{redis_service['spec']['ports'][0]['port']}"
    statefulset = find(objects, "StatefulSet", "genops-redis")
    assert statefulset["spec"]["replicas"] == 1
    assert redis_service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()


def test_configmaps_fit_the_api_servers_object_size_limit():
    for configmap in (o for o in render(DEFAULT) if o["kind"] == "ConfigMap"):
        size = sum(len(key) + len(value.encode()) for key, value in (configmap.get("data") or {}).items())
        # 1 MiB is etcd's limit for the whole object; keep clear of it.
        assert size < 768 * 1024, configmap["metadata"]["name"]


def test_dashboard_configmap_is_discoverable_by_grafanas_sidecar():
    configmap = find(render(DEFAULT), "ConfigMap", "genops-grafana-dashboards")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["genops-cost.json"] == (K8S / "dashboards" / "genops-cost.json").read_text()


def mount_configmap(objects: tuple[dict, ...], spec: dict, volume: str, into: Path) -> Path:
    """Writes a volume's ConfigMaps out as the kubelet would mount them: one file per key."""
    into.mkdir(parents=True)
    for name in configmaps_of_volume(spec, volume):
        for key, value in (find(objects, "ConfigMap", name).get("data") or {}).items():
            (into / key).write_text(value)
    return into


def test_sidecar_starts_from_the_mounted_configmaps(tmp_path):
    # validate-config builds every stage from the files the pod would see, so a pricing table or
    # policy file the stages cannot load fails here, not in a crash-looping pod.
    objects = render(DEFAULT)
    spec = pod_spec(objects)
    sidecar = container(spec, SIDECAR)
    config = load_sidecar_config(sidecar)
    mounts = {
        volume: mount_configmap(objects, spec, volume, tmp_path / volume)
        for volume in ("sidecar-config", "pricing", "policy")
    }
    env = {
        "PATH": "/usr/bin:/bin",
        **{k: v for k, v in env_of(sidecar).items() if k != "GENOPS_CONFIG"},
        # The pod's mount paths, moved under tmp_path.
        "GENOPS_COST_PRICING_FILE": str(mounts["pricing"]),
        "GENOPS_POLICY_POLICY_FILE": str(mounts["policy"] / Path(config.policy.policy_file).name),
        "GENOPS_POLICY_STATE_PATH": str(tmp_path / "budget-state" / Path(config.policy.state_path).name),
    }
    (tmp_path / "budget-state").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "processor", "validate-config", str(mounts["sidecar-config"] / "sidecar.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shipped_policy_file_parses_and_starts_advisory():
    policy = load_policy_file(K8S / "config" / "policy" / "policies.yaml")
    assert policy.budgets and policy.rules
    # A starter file must never block anyone's traffic on its own.
    assert all(item.mode != "enforced" for item in (*policy.budgets, *policy.rules))


def test_readme_overlay_example_sets_the_image_and_backend(tmp_path):
    readme = (K8S / "README.md").read_text()
    (example,) = re.findall(r"```yaml\n(apiVersion: kustomize\.config\.k8s\.io/v1beta1\n.*?)```", readme, re.S)
    base = os.path.relpath(K8S / "base", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(example.replace("../genops-sidecar/k8s/base", base))
    objects = render(tmp_path)
    spec = pod_spec(objects)
    assert container(spec, SIDECAR)["image"] == "registry.example.com/genops-sidecar:0.1.0"
    backend = env_of(container(spec, RETURN_COLLECTOR))["GENOPS_BACKEND_ENDPOINT"]
    assert backend == "otel-gateway.observability.svc.cluster.local:4317"
    for obj in objects:
        if obj["apiVersion"] != OPERATOR_API:
            validate(obj)


# --- copies kept in step with the repository -----------------------------------------------------


def test_collector_config_copy_matches_collector_config_dir():
    original = REPO / "collector-config" / "otelcol-sidecar.yaml"
    copy_in_k8s = K8S / "config" / "otelcol-sidecar.yaml"
    assert copy_in_k8s.read_text() == original.read_text(), "run k8s/sync-config.sh"


def test_pricing_configmap_holds_exactly_the_repositorys_pricing_tables():
    originals = {p.name: p.read_text() for p in (REPO / "pricing_tables").iterdir() if p.is_file()}
    originals = {name: text for name, text in originals.items() if not name.startswith(".")}
    objects = render(DEFAULT)
    held: dict[str, str] = {}
    for name in configmaps_of_volume(pod_spec(objects), "pricing"):
        data = find(objects, "ConfigMap", name).get("data") or {}
        assert not held.keys() & data.keys(), "a table in two pricing ConfigMaps"
        held.update(data)
        # Small enough for client-side `kubectl apply`, whose last-applied annotation is capped at 256 KiB.
        assert sum(len(k) + len(v.encode()) for k, v in data.items()) < 256 * 1024, name
    assert held == originals, "run k8s/sync-config.sh"


# --- the sidecar image ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (K8S / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_runs_as_the_pods_non_root_user():
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    (user,) = [arg for op, arg in final_stage if op == "USER"]
    uid, _, gid = user.partition(":")
    security = pod_spec(render(DEFAULT))["securityContext"]
    assert int(uid) == security["runAsUser"] != 0
    assert int(gid) == security["runAsGroup"]


def test_dockerfile_context_files_exist_and_build_an_installable_wheel(tmp_path):
    # Builds from only what the Dockerfile copies from the context, so a file pyproject.toml needs
    # but the image leaves out (README.md, say) fails here rather than in `docker build`.
    context = tmp_path / "context"
    ignored = [
        line.removeprefix("**/")
        for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("**/")
    ]
    assert "target" in ignored, "the Rust build directory (hundreds of MB) must stay out of the build context"
    for op, arg in dockerfile_instructions():
        if op != "COPY" or arg.startswith("--from"):
            continue
        *sources, _destination = arg.split()
        for source in sources:
            path = REPO / source
            assert path.exists(), f"Dockerfile copies {source}, which is not in the repository"
            target = context / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns(*ignored))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        capture_output=True,
        text=True,
        cwd=context,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("genops_sidecar-*.whl")
    assert wheel.stat().st_size > 0


# --- budget API token and network policy ----------------------------------------------------------


def secret_ref(c: dict, name: str) -> dict:
    (found,) = [item["valueFrom"]["secretKeyRef"] for item in c.get("env", []) if item["name"] == name]
    return found


@pytest.mark.parametrize("kustomization", [DEFAULT, CLUSTER_BUDGETS])
def test_budget_api_token_comes_from_a_shipped_secret_named_by_the_sidecar_config(kustomization):
    objects = render(kustomization)
    sidecar = container(pod_spec(objects), SIDECAR)
    config = load_sidecar_config(sidecar)
    ref = secret_ref(sidecar, config.budget_api.token_env)
    secret = find(objects, "Secret", ref["name"])
    assert ref["key"] in secret["data"]
    # The placeholder is empty: a token everybody can read in this repository would be no token.
    assert secret["data"][ref["key"]] == ""
    # Once an operator fills it in, the pod's config accepts it and the API is guarded.
    token = "a" * 64
    assert load_sidecar_config(sidecar, **{config.budget_api.token_env: token}).budget_api == config.budget_api


def network_policies(objects: tuple[dict, ...]) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def selects(policy: dict, labels: dict) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def allowed_ports(rules: list[dict]) -> dict[int, list[dict]]:
    """port -> the `from`/`to` peers of every rule that opens it ([] = from anywhere)."""
    out: dict[int, list[dict]] = {}
    for rule in rules:
        peers = rule.get("from", rule.get("to", []))
        for port in rule.get("ports", []):
            out.setdefault(port["port"], []).extend(peers or [{}])
    return out


def pod_policies(objects: tuple[dict, ...], pod_labels: dict, kind: str) -> list[dict]:
    return [p for p in network_policies(objects) if selects(p, pod_labels) and kind in p["spec"].get("policyTypes", [])]


def test_network_policy_admits_otlp_from_anywhere_and_scrapes_from_monitoring_only():
    objects = render(DEFAULT)
    daemonset = find(objects, "DaemonSet", "genops-otelcol")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    policies = pod_policies(objects, labels, "Ingress")
    assert policies, "no NetworkPolicy isolates the node agent's ingress"
    ingress = allowed_ports([rule for p in policies for rule in p["spec"].get("ingress", [])])
    assert ingress[4317] == [{}] and ingress[4318] == [{}]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert ingress[9477] == [monitoring]
    assert ingress[8888] == [monitoring]
    # Nothing else is reachable: the loopback ports (4417 sidecar, 4418 return) are not opened.
    assert set(ingress) == {4317, 4318, 9477, 8888}
    # Every port the scrape Service targets is one the policy opens to Prometheus.
    metrics = find(objects, "Service", "genops-sidecar-metrics")
    assert {p["targetPort"] for p in metrics["spec"]["ports"]} <= {9477, 8888}


@pytest.mark.parametrize("kustomization", [DEFAULT, CLUSTER_BUDGETS])
def test_network_policy_egress_allows_dns_and_the_backend(kustomization):
    objects = render(kustomization)
    spec = pod_spec(objects)
    labels = find(objects, "DaemonSet", "genops-otelcol")["spec"]["template"]["metadata"]["labels"]
    rules = [rule for p in pod_policies(objects, labels, "Egress") for rule in p["spec"].get("egress", [])]
    assert rules, "no NetworkPolicy isolates the node agent's egress"
    protocols = {(port["port"], port.get("protocol", "TCP")) for rule in rules for port in rule.get("ports", [])}
    assert {(53, "UDP"), (53, "TCP")} <= protocols
    backend = env_of(container(spec, RETURN_COLLECTOR))["GENOPS_BACKEND_ENDPOINT"]
    host, port = backend.rsplit(":", 1)
    egress = allowed_ports(rules)
    namespace = host.split(".")[1]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}} in egress[int(port)]


def test_cluster_budgets_network_policy_lets_the_sidecars_and_only_them_reach_redis():
    objects = render(CLUSTER_BUDGETS)
    agent_labels = find(objects, "DaemonSet", "genops-otelcol")["spec"]["template"]["metadata"]["labels"]
    redis = find(objects, "StatefulSet", "genops-redis")
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    redis_port = redis["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    egress = allowed_ports([r for p in pod_policies(objects, agent_labels, "Egress") for r in p["spec"]["egress"]])
    assert any(
        peer.get("podSelector", {}).get("matchLabels", {}).items() <= redis_labels.items()
        for peer in egress[redis_port]
    )
    ingress = allowed_ports([r for p in pod_policies(objects, redis_labels, "Ingress") for r in p["spec"]["ingress"]])
    assert set(ingress) == {redis_port}
    assert all(peer["podSelector"]["matchLabels"].items() <= agent_labels.items() for peer in ingress[redis_port])
