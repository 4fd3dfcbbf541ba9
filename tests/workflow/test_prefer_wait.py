"""``Prefer: wait=N`` on the real template: the API function waits on the real workflow.

A Bedrock job (answered by the local stand-in) ends within the wait: 200 with the finished job
and a signed URL. A GPU job with no worker serving its queue cannot end: 202 once the wait is over.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import load_event
from tests.workflow.conftest import Workflow


@pytest.fixture
def stack(workflow_factory: Callable[..., Workflow]) -> Workflow:
    return workflow_factory()


def post(workflow: Workflow, body: dict[str, Any], prefer: str) -> dict[str, Any]:
    event = copy.deepcopy(load_event("api_post_generate.json"))
    event["body"] = json.dumps(body)
    event["headers"]["Prefer"] = prefer
    event["multiValueHeaders"] = {name: [value] for name, value in event["headers"].items()}
    response: dict[str, Any] = workflow.api(event)
    return response


def header(response: dict[str, Any], name: str) -> list[str]:
    headers: dict[str, list[str]] = response.get("multiValueHeaders") or {}
    return headers.get(name, [])


def test_a_bedrock_job_answers_200_with_the_finished_job(stack: Workflow) -> None:
    response = post(stack, {"prompt": "a lighthouse at dawn", "seed": 7}, "wait=20")

    assert response["statusCode"] == 200, response["body"]
    body = json.loads(response["body"])
    assert body["status"] == "SUCCEEDED"
    [image] = body["images"]
    assert "X-Amz-Signature" in image["url"]
    assert header(response, "Preference-Applied") == ["wait=20"]
    assert header(response, "Vary") == ["Prefer"]
    assert stack.wait(body["execution_id"])["status"] == "SUCCEEDED"
    key = urlsplit(image["url"]).path.lstrip("/")  # in-process moto: read it with boto3
    assert stack.png(key).startswith(b"\x89PNG")


def test_a_gpu_job_with_no_worker_answers_202_after_the_wait(stack: Workflow) -> None:
    started = time.monotonic()
    response = post(stack, {"prompt": "a red bicycle", "backend": "gpu"}, "wait=1")
    elapsed = time.monotonic() - started

    assert response["statusCode"] == 202, response["body"]
    body = json.loads(response["body"])
    assert body["status_url"].endswith(f"/generate/{body['execution_id']}")
    assert header(response, "Preference-Applied") == ["wait=1"]
    assert 1.0 <= elapsed < 15.0  # it waited, and not for the whole default wait
    status_code, status = stack.status(body["execution_id"])
    assert (status_code, status["status"]) == (200, "RUNNING")
    assert stack.status(body["execution_id"], method="DELETE")[0] == 202  # tidy up
