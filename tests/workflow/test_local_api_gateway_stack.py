"""The real template's ApiFunction behind the local API Gateway stand-in, deployed in moto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagegen.local.api_gateway import LocalApiGateway
from imagegen.local.deploy import DeployedStack, deploy_stack
from imagegen.local.lambda_runtime import LambdaRuntime
from imagegen.local.moto_aws import LocalAws

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def real_stack(aws: LocalAws) -> DeployedStack:
    return deploy_stack(REPO_ROOT / "template.yaml")


def call(gateway: LocalApiGateway, method: str, target: str, body: Any = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    headers = [("Host", "127.0.0.1:3000"), ("Content-Type", "application/json"), ("x-api-key", "k")]
    response = gateway.handle(method, target, headers, raw, "127.0.0.1")
    return response.status, json.loads(response.body)


def test_real_api_function_through_the_gateway(real_stack: DeployedStack) -> None:
    gateway = LocalApiGateway(real_stack, real_stack.runtime or LambdaRuntime())

    status, accepted = call(gateway, "POST", "/generate", {"prompt": "a fox", "backend": "gpu"})
    assert status == 202, accepted
    assert accepted["status_url"] == f"http://127.0.0.1:3000/generate/{accepted['execution_id']}"

    status, job = call(gateway, "GET", f"/generate/{accepted['execution_id']}")
    assert status == 200, job
    assert job["status"] == "RUNNING"

    status, invalid = call(
        gateway, "POST", "/generate", {"prompt": "x", "width": 100, "height": 100}
    )
    assert status == 422
    assert {field["field"] for field in invalid["error"]["fields"]} == {"width", "height"}

    status, missing = call(gateway, "GET", "/nothing/here")
    # The template's MISSING_AUTHENTICATION_TOKEN gateway response, with API Gateway's status.
    assert status == 403
    assert missing == {"error": {"code": "FORBIDDEN", "message": "Missing Authentication Token"}}
