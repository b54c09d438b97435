"""The DaemonSet's pod, run by `podman kube play` the way a kubelet would run it on a node.

podman is not a kubelet, so what it lacks is done here, and only that:
- native sidecars (init containers with restartPolicy Always) become ordinary containers started
  first; `stop()` keeps the kubelet's termination order (main containers first, then the sidecars in
  reverse order), which podman's own `pod stop` does not;
- ConfigMap and projected volumes become host directories laid out as the kubelet's atomic writer
  lays them out (`..<timestamp>/` holding the files, `..data` -> it, one `name -> ..data/name`
  symlink per key), so `swap_configmap_dir` can update them the kubelet way;
- emptyDir volumes become host directories owned by the pod's fsGroup;
- env from Secrets is resolved from the rendered Secrets;
- the pod shares the host network (no CNI here), so every listen address is moved to a free
  loopback port through the configs' own environment variables (`ports` maps manifest port -> here).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "k8s" / "image" / "containers.conf"


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def write_configmap_dir(directory: Path, files: dict[str, str], uid: int, gid: int) -> None:
    """Lay `files` out in `directory` as the kubelet's atomic writer does, replacing what was there.

    The new version is written in full into a fresh `..<timestamp>` directory, then `..data` is
    renamed onto a symlink to it (one atomic step for readers), then the per-key symlinks of keys
    that left are removed and the old version deleted.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    version = directory / stamp
    version.mkdir()
    for name, text in files.items():
        (version / name).write_text(text)
        os.chown(version / name, uid, gid)
        (version / name).chmod(0o644)
    version.chmod(0o755)
    data = directory / "..data"
    old = data.resolve() if data.is_symlink() else None
    temporary = directory / "..data_tmp"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(stamp)
    temporary.rename(data)
    for entry in directory.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in files:
            entry.unlink()
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old is not None and old != version:
        for child in old.iterdir():
            child.unlink()
        old.rmdir()


@dataclass
class KubePod:
    """A pod built from a rendered kustomization; `play()` starts it, `stop()` ends it."""

    objects: tuple[dict, ...]
    workdir: Path
    images: dict[str, str]  # container name -> local image
    env_overrides: dict[str, dict[str, str]]  # container name -> extra env (listen addresses)
    name: str = "genops-pod-test"
    spec: dict = field(default_factory=dict)
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    sidecars: list[str] = field(default_factory=list)
    mains: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        (daemonset,) = [o for o in self.objects if o["kind"] == "DaemonSet"]
        self.template = copy.deepcopy(daemonset["spec"]["template"])
        self.spec = self._podman_spec(self.template["spec"])

    # --- the rendered objects -----------------------------------------------------------------

    def _object(self, kind: str, name: str) -> dict | None:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        return found[0] if found else None

    def configmap_files(self, volume: dict) -> dict[str, str]:
        names = (
            [volume["configMap"]["name"]]
            if "configMap" in volume
            else [source["configMap"]["name"] for source in volume["projected"]["sources"]]
        )
        files: dict[str, str] = {}
        for name in names:
            configmap = self._object("ConfigMap", name)
            assert configmap is not None, f"the pod mounts ConfigMap {name}, which the kustomization lacks"
            files.update(configmap.get("data") or {})
        return files

    def _secret_value(self, ref: dict) -> str | None:
        secret = self._object("Secret", ref["name"])
        if secret is None or ref["key"] not in (secret.get("data") or {}):
            assert ref.get("optional"), f"required Secret key {ref['name']}/{ref['key']} is not rendered"
            return None
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    # --- the podman pod ------------------------------------------------------------------------

    def _podman_spec(self, template: dict) -> dict:
        spec = copy.deepcopy(template)
        security = spec.get("securityContext", {})
        uid, gid = security.get("runAsUser", 0), security.get("fsGroup", security.get("runAsGroup", 0))
        init = spec.pop("initContainers", [])
        self.sidecars = [c["name"] for c in init if c.get("restartPolicy") == "Always"]
        assert len(self.sidecars) == len(init), "only native sidecars are handled as init containers"
        for c in init:
            del c["restartPolicy"]
        self.mains = [c["name"] for c in spec["containers"]]
        spec["containers"] = [*init, *spec["containers"]]
        for c in spec["containers"]:
            c["image"] = self.images[c["name"]]
            # On the host network a containerPort is only a label; podman refuses port mappings there.
            c.pop("ports", None)
            env = []
            for item in c.get("env", []):
                if "valueFrom" in item:
                    value = self._secret_value(item["valueFrom"]["secretKeyRef"])
                    if value is None:
                        continue
                    item = {"name": item["name"], "value": value}
                env.append(item)
            overrides = self.env_overrides.get(c["name"], {})
            env = [item for item in env if item["name"] not in overrides]
            env += [{"name": k, "value": v} for k, v in overrides.items()]
            c["env"] = env
        volumes = []
        for volume in spec.get("volumes", []):
            directory = self.workdir / "volumes" / volume["name"]
            if "configMap" in volume or "projected" in volume:
                write_configmap_dir(directory, self.configmap_files(volume), uid, gid)
            elif "emptyDir" in volume:
                directory.mkdir(parents=True)
                os.chown(directory, uid, gid)
                directory.chmod(0o2775)
            else:
                raise AssertionError(f"volume {volume['name']}: no stand-in for {sorted(volume)}")
            self.volume_dirs[volume["name"]] = directory
            volumes.append({"name": volume["name"], "hostPath": {"path": str(directory), "type": "Directory"}})
        spec["volumes"] = volumes
        spec["hostNetwork"] = True
        # The kubelet restarts a failed container; a test wants to see the failure instead.
        spec["restartPolicy"] = "Never"
        return spec

    def manifest(self) -> str:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "labels": self.template["metadata"].get("labels", {})},
            "spec": self.spec,
        }
        return yaml.safe_dump(pod, sort_keys=False)

    def container(self, name: str) -> dict:
        (found,) = [c for c in self.spec["containers"] if c["name"] == name]
        return found

    def container_id(self, name: str) -> str:
        return f"{self.name}-{name}"

    def play(self, sidecars_started: Callable[[], None]) -> None:
        """Starts the pod; the main containers only once `sidecars_started` returns, as the kubelet
        starts them only after the native sidecars' startup probes pass (podman starts all at once,
        so the main containers are stopped at once and started again)."""
        path = self.workdir / "pod.yaml"
        path.write_text(self.manifest())
        podman("kube", "play", "--replace", "--network", "host", str(path), timeout=300)
        for name in self.mains:
            podman("stop", "--time", "0", self.container_id(name))
        sidecars_started()
        for name in self.mains:
            podman("start", self.container_id(name))

    def state(self, name: str) -> dict:
        out = podman("inspect", "--format", "{{json .State}}", self.container_id(name)).stdout
        return yaml.safe_load(out)

    def runtime_config(self, name: str) -> dict:
        """What podman really applied to a container: user and read-only root filesystem."""
        out = podman(
            "inspect",
            "--format",
            '{"user": "{{.Config.User}}", "read_only": {{.HostConfig.ReadonlyRootfs}}}',
            self.container_id(name),
        ).stdout
        return yaml.safe_load(out)

    def logs(self, name: str) -> str:
        result = podman("logs", self.container_id(name), check=False)
        return result.stdout + result.stderr

    def stop(self, grace_seconds: int) -> dict[str, float]:
        """Stops the pod in the kubelet's order; returns container name -> seconds its stop took."""
        took: dict[str, float] = {}
        for name in [*self.mains, *reversed(self.sidecars)]:
            start = time.monotonic()
            podman("stop", "--time", str(grace_seconds), self.container_id(name), timeout=grace_seconds + 60)
            took[name] = time.monotonic() - start
        return took

    def remove(self) -> None:
        podman("pod", "rm", "--force", "--time", "0", self.name, check=False)
