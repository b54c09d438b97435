"""A `serve` process with a budget and its HTTP port: the bearer token, the budget API over gRPC, and
HTTP GETs that keep the status and headers of an error answer."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import grpc

from processor.protos import budget_pb2
from processor.stages.policy.budget_api import SERVICE
from tests.support.cli import base_env
from tests.support.serve import start_sidecar, terminate, wait_ready

TOKEN = "4f1c2a9be07d45c3a8e2f61b9d0c7e35"


POLICY = """
budgets:
  - name: ml-daily
    dimension: team
    value: ml
    period: daily
    limit_usd: 10
"""


def get(url: str, authorization: str | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


class Sidecar:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.env = base_env(tmp_path)
        policy = tmp_path / "policies.yaml"
        policy.write_text(POLICY)
        self.env.update({"GENOPS_POLICY_POLICY_FILE": str(policy), "GENOPS_POLICY_STATE_BACKEND": "memory", **env})
        self.http = self.env["GENOPS_HTTP_LISTEN"]
        self.grpc = self.env["GENOPS_SERVER_LISTEN"]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Sidecar:
        self.process = start_sidecar(self.env)
        wait_ready(self.process, self.http)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.stderr = terminate(self.process)

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def threads(self) -> int:
        assert self.process is not None
        return len(list(Path(f"/proc/{self.process.pid}/task").iterdir()))

    def budget_status(self, metadata: tuple[tuple[str, str], ...] = ()) -> budget_pb2.GetBudgetStatusResponse:
        with grpc.insecure_channel(self.grpc) as channel:
            call = channel.unary_unary(
                f"/{SERVICE}/GetBudgetStatus",
                request_serializer=budget_pb2.GetBudgetStatusRequest.SerializeToString,
                response_deserializer=budget_pb2.GetBudgetStatusResponse.FromString,
            )
            return call(budget_pb2.GetBudgetStatusRequest(attribution={"team": "ml"}), metadata=metadata, timeout=10)
