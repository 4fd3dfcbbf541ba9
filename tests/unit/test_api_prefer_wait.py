"""``Prefer: wait=N`` on POST /generate: 200 with the finished job, or 202 once the wait is over.

moto executes the state machines here (a Pass state that ends at once with an "Image Generated"
detail, a Wait state that outlasts the preference), so the API waits on real execution statuses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from imagegen_common.models import ImageGeneratedDetail, Parameters, SignedImage
from tests.conftest import FakeLambdaContext, import_function
from tests.jobs_table import create_jobs_table
from tests.unit.test_api import post_event, respond

BUCKET = "images"
IMAGE_KEY = "images/job/0.png"
ROLE = "arn:aws:iam::123456789012:role/sfn"


def ended_detail() -> str:
    detail = ImageGeneratedDetail(
        execution_id="placeholder",
        owner="apikey:key-a",
        backend="bedrock",
        model_id="stability.stable-image-core-v1:1",
        parameters=Parameters(prompt="a red fox"),
        images=[
            SignedImage(
                index=0,
                url="https://unsigned.example/0.png",
                expires_at=datetime(2030, 1, 1, tzinfo=UTC),
                s3_uri=f"s3://{BUCKET}/{IMAGE_KEY}",
                width=1024,
                height=1024,
            )
        ],
        completed_at=datetime(2030, 1, 1, tzinfo=UTC),
    )
    return detail.model_dump_json()


def definition(kind: str) -> str:
    if kind == "ends at once":
        state = {"Type": "Pass", "Result": json.loads(ended_detail()), "End": True}
    else:  # outlasts every wait asked for below; its thread is a daemon
        state = {"Type": "Wait", "Seconds": 4, "End": True}
    return json.dumps({"StartAt": "Work", "States": {"Work": state}})


@pytest.fixture
def machine_kind() -> str:
    return "ends at once"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, machine_kind: str) -> Iterator[Any]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        machine = boto3.client("stepfunctions").create_state_machine(
            name="imagegen-test", definition=definition(machine_kind), roleArn=ROLE
        )
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        monkeypatch.setenv("STATE_MACHINE_ARN", machine["stateMachineArn"])
        monkeypatch.setenv("IMAGES_BUCKET", BUCKET)
        monkeypatch.setenv("JOBS_TABLE_NAME", create_jobs_table())
        yield import_function("api")


def post(
    api: Any,
    prefer: str | None,
    remaining_ms: int = 30_000,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, list[str]]]:
    context = FakeLambdaContext()
    context.get_remaining_time_in_millis = lambda: remaining_ms  # type: ignore[method-assign]
    extra = dict(headers or {})
    if prefer is not None:
        extra["Prefer"] = prefer
    response = respond(api, post_event({"prompt": "a red fox"}, headers=extra), context)
    return int(response["statusCode"]), json.loads(response["body"]), response["multiValueHeaders"]


def test_a_job_that_ends_within_the_wait_is_answered_200_with_signed_urls(api: Any) -> None:
    status, body, headers = post(api, "wait=5")

    assert status == 200
    assert body["status"] == "SUCCEEDED"
    assert IMAGE_KEY in body["images"][0]["url"]
    assert "X-Amz-Signature=" in body["images"][0]["url"]
    assert headers["Preference-Applied"] == ["wait=5"]
    assert headers["Vary"] == ["Prefer"]


@pytest.mark.parametrize("machine_kind", ["outlasts the wait"])
def test_a_job_still_running_after_the_wait_is_answered_202(api: Any) -> None:
    started = time.monotonic()
    status, body, headers = post(api, "wait=1")
    elapsed = time.monotonic() - started

    assert status == 202
    assert set(body) == {"execution_id", "status_url"}
    assert headers["Preference-Applied"] == ["wait=1"]
    assert headers["Vary"] == ["Prefer"]
    assert 1.0 <= elapsed < 3.0


@pytest.mark.parametrize(
    "prefer", ["wait=abc", "wait=-1", "wait=1.5", "wait", "wait=", "respond-async", "wait=0", ""]
)
def test_a_malformed_or_zero_wait_is_ignored_and_answered_202_at_once(
    api: Any, prefer: str
) -> None:
    status, body, headers = post(api, prefer)

    assert status == 202  # the job ends at once, but nobody asked to wait for it
    assert "execution_id" in body
    assert "Preference-Applied" not in headers


def test_without_prefer_post_answers_202_varying_on_prefer(api: Any) -> None:
    status, _, headers = post(api, None)

    assert status == 202
    assert "Preference-Applied" not in headers
    assert headers["Vary"] == ["Prefer"]


@pytest.mark.parametrize(
    ("prefer", "remaining_ms", "applied"),
    [
        ("wait=600", 30_000, "wait=25"),  # API Gateway ends the request at 29 s
        ("wait=20", 10_000, "wait=8"),  # the invocation's time left, less 2 s to answer
        ("respond-async, WAIT = 3 ;foo=bar", 30_000, "wait=3"),
    ],
)
def test_the_wait_applied_is_clamped_and_named_in_preference_applied(
    api: Any, prefer: str, remaining_ms: int, applied: str
) -> None:
    status, _, headers = post(api, prefer, remaining_ms=remaining_ms)

    assert status == 200
    assert headers["Preference-Applied"] == [applied]


def test_an_idempotent_retry_with_prefer_gets_the_finished_job(api: Any) -> None:
    key = {"Idempotency-Key": "order-7"}
    first_status, first, _ = post(api, None, headers=key)
    second_status, second, _ = post(api, "wait=5", headers=key)

    assert (first_status, second_status) == (202, 200)
    assert second["execution_id"] == first["execution_id"]


def test_an_aws_error_while_waiting_still_answers_202(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def throttled(*args: Any) -> str:
        error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
        raise ClientError(error, "DescribeExecution")

    monkeypatch.setattr(api, "execution_status", throttled)
    status, body, headers = post(api, "wait=5")

    assert status == 202
    assert "execution_id" in body
    assert headers["Preference-Applied"] == ["wait=5"]


# --- The preference and the wait, without AWS --------------------------------------------------


@pytest.fixture
def prefer() -> Any:
    return import_function("api", "prefer")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=10", 10),
        ("Wait=10", 10),
        ("  wait = 10 ", 10),
        ('wait="7"', 7),
        ("respond-async, wait=3", 3),
        ("handling=lenient; x=1, wait=4; y=2", 4),
        ('return=minimal; note="a, b", wait=6', 6),
        ("wait=2, wait=9", 2),  # RFC 7240: only the first instance counts
        ("wait=x, wait=9", None),
        ("respond-async", None),
        ("waiting=3", None),
        (None, None),
    ],
)
def test_prefer_is_read_as_rfc_7240_says(prefer: Any, header: str | None, seconds: int) -> None:
    assert prefer.requested_wait(header) == seconds


def test_waiting_polls_with_backoff_until_the_deadline(prefer: Any) -> None:
    now = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds

    ended = prefer.wait_for_end(lambda: "RUNNING", 2, sleep=sleep, clock=lambda: now[0])

    assert ended is False
    assert now[0] == pytest.approx(2.0)
    assert naps[:4] == pytest.approx([0.1, 0.2, 0.4, 0.5])
    assert max(naps) <= 0.5


def test_waiting_stops_at_the_first_status_that_is_an_end(prefer: Any) -> None:
    statuses = iter(["RUNNING", "PENDING_REDRIVE", "ABORTED"])
    naps: list[float] = []

    assert prefer.wait_for_end(lambda: next(statuses), 10, sleep=naps.append) is True
    assert len(naps) == 2
