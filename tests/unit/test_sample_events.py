"""Every file in events/ runs through its function's handler, as `sam local invoke -e` would."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from imagegen.local.fake_bedrock import FakeBedrock
from imagegen_common.png import png_size
from tests.conftest import EVENTS_DIR, import_function, load_event
from tests.jobs_table import create_jobs_table

BUCKET = "imagegen-images-123456789012"
PASS_DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})


def function_of(event_file: str) -> str:
    """The function directory an event file belongs to: the longest matching prefix."""
    names = sorted((path.name for path in (EVENTS_DIR.parent / "functions").iterdir()), key=len)
    matches = [name for name in names if event_file.startswith(name)]
    assert matches, f"events/{event_file} matches no function in functions/"
    return matches[-1]


SAMPLE_EVENTS = sorted(path.name for path in EVENTS_DIR.glob("*.json"))


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBedrock]:
    with mock_aws(), FakeBedrock() as bedrock:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        boto3.client("events").create_event_bus(Name="imagegen-bus")
        machine = boto3.client("stepfunctions").create_state_machine(
            name="imagegen", definition=PASS_DEFINITION, roleArn="arn:aws:iam::123456789012:role/x"
        )
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.endpoint_url)
        monkeypatch.setenv("IMAGES_BUCKET", BUCKET)
        monkeypatch.setenv("EVENT_BUS_NAME", "imagegen-bus")
        monkeypatch.setenv("STATE_MACHINE_ARN", machine["stateMachineArn"])
        monkeypatch.setenv("BLOCKED_PROMPT_TERMS", "forbidden-thing")
        monkeypatch.setenv("JOBS_TABLE_NAME", create_jobs_table())
        secret = boto3.client("secretsmanager").create_secret(
            Name="imagegen-webhook-signing", SecretString="whsec_" + "A" * 32
        )
        monkeypatch.setenv("WEBHOOK_SECRET_ARN", secret["ARN"])
        queue = boto3.client("sqs").create_queue(QueueName="imagegen-webhook-delivery")
        monkeypatch.setenv("WEBHOOK_DELIVERY_QUEUE_URL", queue["QueueUrl"])
        yield bedrock


def test_every_function_has_a_sample_event() -> None:
    functions = {path.name for path in (EVENTS_DIR.parent / "functions").iterdir() if path.is_dir()}
    assert functions == {function_of(name) for name in SAMPLE_EVENTS}


@pytest.mark.parametrize("event_file", SAMPLE_EVENTS)
def test_sample_event_runs_through_its_handler(
    event_file: str, aws: FakeBedrock, lambda_context: Any
) -> None:
    handler = import_function(function_of(event_file)).lambda_handler
    event = load_event(event_file)
    check = EXPECTATIONS[event_file]
    check(handler, event, lambda_context)


def _api_status(expected: int) -> Any:
    def check(handler: Any, event: dict[str, Any], context: Any) -> None:
        response = handler(event, context)
        assert response["statusCode"] == expected, response["body"]
        json.loads(response["body"])

    return check


def _validates_prompt(handler: Any, event: dict[str, Any], context: Any) -> None:
    job = handler(event, context)
    assert job["model_id"] == "stability.stable-image-core-v1:1"
    assert [slot["seed"] for slot in job["images"]] == [42, 43]
    assert job["images"][1]["s3_key"] == f"images/{job['job_id']}/1.png"
    assert job["bucket"] == BUCKET


def _rejects_blocked_term(handler: Any, event: dict[str, Any], context: Any) -> None:
    with pytest.raises(Exception, match="forbidden-thing") as raised:
        handler(event, context)
    assert type(raised.value).__name__ == "InvalidPromptError"


def _generates_with_bedrock(handler: Any, event: dict[str, Any], context: Any) -> None:
    outcome = handler(event, context)
    assert outcome["s3_key"] == event["image"]["s3_key"]
    png = boto3.client("s3").get_object(Bucket=BUCKET, Key=outcome["s3_key"])["Body"].read()
    assert png_size(png) == (outcome["width"], outcome["height"]) == (1024, 1024)


def _signs_urls(handler: Any, event: dict[str, Any], context: Any) -> None:
    boto3.client("s3").put_object(Bucket=BUCKET, Key=event["images"][0]["s3_key"], Body=b"png")
    detail = handler(event, context)
    assert [image["index"] for image in detail["images"]] == [0]
    assert detail["failed_images"][0]["error"]["code"] == "CONTENT_FILTERED"
    assert "X-Amz-Signature" in detail["images"][0]["url"]


def _raises(error_name: str) -> Any:
    def check(handler: Any, event: dict[str, Any], context: Any) -> None:
        with pytest.raises(Exception) as raised:  # noqa: PT011 - the class is the assertion
            handler(event, context)
        assert type(raised.value).__name__ == error_name

    return check


def _describes(code: str) -> Any:
    def check(handler: Any, event: dict[str, Any], context: Any) -> None:
        detail = handler(event, context)
        assert detail["error"]["code"] == code
        assert detail["schema_version"] == "1.2"
        assert detail["cost"]["usd"] == 0

    return check


def _fails_lost_jobs(handler: Any, event: dict[str, Any], context: Any) -> None:
    # The token is unknown to this account (as for a task that already ended): settled, and the
    # poison record is consumed too; nothing is left for a retry.
    assert handler(event, context) == {"batchItemFailures": []}


def _reports_cancel(handler: Any, event: dict[str, Any], context: Any) -> None:
    detail = event["detail"]
    boto3.client("stepfunctions").start_execution(
        stateMachineArn=detail["stateMachineArn"], name=detail["name"], input=detail["input"]
    )
    published = handler(event, context)
    assert published["detail_type"] == "Image Generation Cancelled"
    assert published["detail"]["owner"] == "apikey:k1a2b3c4d5"


def _records_progress(handler: Any, event: dict[str, Any], context: Any) -> None:
    # No such job in a fresh table: the event is read and changes nothing (it creates no job).
    assert handler(event, context)["applied"] is False
    table = boto3.client("dynamodb").scan(TableName=os.environ["JOBS_TABLE_NAME"])
    assert table["Count"] == 0


def _delivers_webhooks(handler: Any, event: dict[str, Any], context: Any) -> None:
    # The sample's job is not in a fresh table and no WebhookUrl is set: no target, so the
    # message is consumed and nothing is POSTed or put back for a retry.
    deliverer = inspect.unwrap(handler).__globals__["deliverer"]
    calls: list[str] = []
    deliverer.post = lambda *args: calls.append("post")
    deliverer.set_visibility = lambda *args: calls.append("set_visibility")
    assert handler(event, context) == {"batchItemFailures": []}
    assert calls == []


def _summarises(metric: str) -> Any:
    def check(handler: Any, event: dict[str, Any], context: Any) -> None:
        assert handler(event, context)["metric_name"] == metric

    return check


EXPECTATIONS: dict[str, Any] = {
    "api_post_generate.json": _api_status(202),
    "api_post_generate_idempotent.json": _api_status(202),
    "api_post_generate_invalid.json": _api_status(422),
    "api_get_generate.json": _api_status(404),  # no such execution in a fresh account
    "api_delete_generate.json": _api_status(404),
    "api_get_openapi.json": _api_status(200),
    "validate_prompt.json": _validates_prompt,
    "validate_prompt_blocked_term.json": _rejects_blocked_term,
    "generate_with_bedrock.json": _generates_with_bedrock,
    "create_presigned_urls.json": _signs_urls,
    "create_presigned_urls_throttled.json": _raises("ModelThrottledError"),
    "describe_failure.json": _describes("CONTENT_FILTERED"),
    "describe_failure_gpu_timeout.json": _describes("TIMEOUT"),
    "fail_lost_gpu_jobs.json": _fails_lost_jobs,
    "report_job_ending.json": _reports_cancel,
    "record_job_progress.json": _records_progress,
    "webhook_delivery.json": _delivers_webhooks,
    "image_events_subscriber.json": _summarises("ImagesDelivered"),
    "image_events_subscriber_failed.json": _summarises("FailuresDelivered"),
    "image_events_subscriber_cancelled.json": _summarises("CancellationsDelivered"),
}


def test_every_sample_event_has_an_expectation() -> None:
    assert set(EXPECTATIONS) == set(SAMPLE_EVENTS), "add the new event file to EXPECTATIONS"


def test_sample_event_files_are_json_objects() -> None:
    for path in Path(EVENTS_DIR).glob("*.json"):
        assert isinstance(json.loads(path.read_text()), dict), path.name
