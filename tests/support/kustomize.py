"""The k8s/ manifests rendered the way `kubectl apply -k` renders them, and the names in them tests look up."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
# Kustomizations under k8s/ and the containers of the DaemonSet's pod.
DEFAULT = "."
SIDECAR = "genops-sidecar"
COLLECTOR = "otelcol"
# The Collector running the return leg (sidecar -> backend), a native sidecar stopped last.
RETURN_COLLECTOR = "otelcol-return"


@functools.cache
def render(kustomization: str | Path) -> tuple[dict, ...]:
    # kustomize itself (.ci/run installs it from the Go module proxy); `kubectl kustomize` embeds
    # the same library, a fallback on a developer's machine.
    if kustomize := shutil.which("kustomize") or _go_bin("kustomize"):
        command = [kustomize, "build"]
    elif kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize"]
    else:
        pytest.skip("kustomize is not installed: go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.3")
    result = subprocess.run([*command, str(K8S / kustomization)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _go_bin(name: str) -> str | None:
    """`go install` puts binaries in $GOBIN or $GOPATH/bin (default ~/go/bin), often not on PATH."""
    for folder in (os.environ.get("GOBIN"), os.environ.get("GOPATH") and os.path.join(os.environ["GOPATH"], "bin")):
        if folder and os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    default = Path.home() / "go" / "bin" / name
    return str(default) if os.access(default, os.X_OK) else None
