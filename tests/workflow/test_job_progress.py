"""Progress on the real workflow: the jobs table follows a job from submit to its end.

Validate Prompt, each Bedrock image and Create Pre-signed URLs put "Image Generation Progress"
events on the bus; RecordJobProgressFunction (a rule on the bus) writes them into JobsTable;
ReportJobEndingFunction writes the ending. ``GET /generate/{id}`` merges the table into what Step
Functions says, and ``GET /generate`` lists the caller's jobs from it.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from imagegen_common.job_records import JobRecord, jobs_table, read_job
from imagegen_common.models import (
    IMAGE_GENERATION_PROGRESS,
    ImageGenerationProgressDetail,
    Stage,
)
from tests.conftest import load_event
from tests.workflow.conftest import Workflow


def record_of(workflow: Workflow, execution_id: str) -> JobRecord | None:
    table = jobs_table(workflow.stack.only("tables"), client=boto3.client("dynamodb"))
    return read_job(table, execution_id, workflow.owner)


def wait_for(
    what: str, check: Callable[[], Any], timeout_s: float = 20, every_s: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"never: {what}")


def list_page(workflow: Workflow, **query: str) -> tuple[int, dict[str, Any]]:
    event = copy.deepcopy(load_event("api_get_generate.json"))
    event.update(
        resource="/generate",
        path="/generate",
        pathParameters=None,
        queryStringParameters=query or None,
        multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None,
    )
    event["requestContext"]["resourcePath"] = "/generate"
    response = workflow.api(event)
    return response["statusCode"], json.loads(response["body"])


@pytest.fixture
def progress_events(
    workflow: Workflow, request: pytest.FixtureRequest
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Every progress event the bus routes, through a rule of the test's own to a queue of its
    own (removed after the test)."""
    sqs = boto3.client("sqs")
    events = boto3.client("events")
    name = f"progress-{abs(hash(request.node.nodeid))}"
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    bus = workflow.stack.only("event_buses")
    events.put_rule(
        Name=name,
        EventBusName=bus,
        EventPattern=json.dumps({"detail-type": [IMAGE_GENERATION_PROGRESS]}),
    )
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}])
    received: list[dict[str, Any]] = []

    def drain() -> list[dict[str, Any]]:
        while True:
            answer = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = answer.get("Messages", [])
            if not messages:
                return received
            for message in messages:
                received.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    yield drain
    events.remove_targets(Rule=name, EventBusName=bus, Ids=["q"])
    events.delete_rule(Name=name, EventBusName=bus)
    sqs.delete_queue(QueueUrl=queue_url)


def gate_bedrock_seed(
    workflow: Workflow, seed: int, monkeypatch: pytest.MonkeyPatch
) -> threading.Event:
    """Hold the Bedrock call for the image with ``seed`` until the returned event is set (the
    stand-in is the suite's: it is put back after the test)."""
    release = threading.Event()
    original = workflow.bedrock.invoke_model

    def invoke_model(model_id: str, raw_body: bytes) -> dict[str, Any]:
        if json.loads(raw_body or b"{}").get("seed") == seed:
            release.wait(timeout=30)
        return original(model_id, raw_body)

    monkeypatch.setattr(workflow.bedrock, "invoke_model", invoke_model)
    return release


def test_a_bedrock_job_shows_its_stages_and_images_as_they_arrive(
    workflow: Workflow,
    progress_events: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = gate_bedrock_seed(workflow, 101, monkeypatch)
    try:
        execution_id = workflow.submit({"prompt": "two boats", "num_images": 2, "seed": 100})
        running = wait_for(
            "one of two images shown while the other is generating",
            lambda: (
                status
                if (status := workflow.status(execution_id)[1]).get("progress")
                and status["progress"]["step"] == 1
                else None
            ),
        )
    finally:
        release.set()

    assert running["status"] == "RUNNING"
    assert running["stage"] == "generating" and running["backend"] == "bedrock"
    assert running["progress"] == {
        "step": 1,
        "steps": 2,
        "percent": 50.0,
        "unit": "images",
        "eta_seconds": None,
    }
    [image] = running["images"]
    assert image["seed"] == 100 and "X-Amz-Signature" in image["url"]
    assert running["submitted_at"] and running["started_at"] and running["updated_at"]
    assert running["queue_position"] is None

    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"
    ended = wait_for(
        "the ending recorded in the table",
        lambda: (record := record_of(workflow, execution_id)) and record.stage is Stage.SUCCEEDED,
    )
    assert ended
    record = record_of(workflow, execution_id)
    assert record is not None
    assert [outcome.index for outcome in record.images] == [0, 1]
    assert record.cost is not None and record.cost.usd > 0
    _, status = workflow.status(execution_id)
    assert status["stage"] == "succeeded" and len(status["images"]) == 2
    assert status["started_at"] and status["cost"]["usd"] == record.cost.usd

    # Once its ending is reported, every event of the job is on the bus (tests/endings.py).
    workflow.result_events(execution_id)
    details = [ImageGenerationProgressDetail.model_validate(e["detail"]) for e in progress_events()]
    assert all(detail.execution_id == execution_id for detail in details)
    stages = [detail.stage for detail in sorted(details, key=lambda detail: detail.at)]
    assert stages == [Stage.GENERATING, Stage.GENERATING, Stage.GENERATING, Stage.SIGNING]
    assert sorted(d.image.index for d in details if d.image is not None) == [0, 1]
    [start] = [d for d in details if d.progress is not None]
    assert (start.progress.step, start.progress.steps) == (0, 2)  # type: ignore[union-attr]

    code, page = list_page(workflow)
    assert code == 200
    assert [job["execution_id"] for job in page["jobs"]] == [execution_id]
    assert page["jobs"][0]["status"] == "SUCCEEDED" and page["jobs"][0]["stage"] == "succeeded"


def test_gpu_jobs_report_their_queue_position_until_a_worker_takes_them(
    workflow: Workflow,
) -> None:
    ids = [workflow.submit({"prompt": f"gpu job {n}", "backend": "gpu"}) for n in range(3)]

    def positions() -> list[int] | None:
        found = [workflow.status(execution_id)[1].get("queue_position") for execution_id in ids]
        return found if None not in found else None

    queued = wait_for("every job with a queue position", positions)
    assert sorted(queued) == [0, 1, 2]
    for execution_id in ids:
        _, status = workflow.status(execution_id)
        assert (status["status"], status["stage"], status["backend"]) == (
            "RUNNING",
            "queued",
            "gpu",
        )
        assert status["started_at"] is None

    workflow.serve_gpu_queue("succeed", jobs=3)
    for execution_id in ids:
        assert workflow.wait(execution_id)["status"] == "SUCCEEDED"
    wait_for(
        "every ending recorded",
        lambda: all(
            (record := record_of(workflow, execution_id)) and record.stage is Stage.SUCCEEDED
            for execution_id in ids
        ),
    )
    for execution_id in ids:
        _, status = workflow.status(execution_id)
        assert status["queue_position"] is None and status["stage"] == "succeeded"


def test_a_cancelled_job_is_not_brought_back_by_progress_that_arrives_later(
    workflow: Workflow,
) -> None:
    execution_id = workflow.submit({"prompt": "cancel me", "backend": "gpu"})
    wait_for(
        "the job queued for a GPU",
        lambda: workflow.status(execution_id)[1].get("queue_position") is not None,
    )

    code, _ = workflow.status(execution_id, method="DELETE")
    assert code == 202
    assert workflow.wait(execution_id)["status"] == "ABORTED"
    wait_for(
        "the cancellation recorded",
        lambda: (record := record_of(workflow, execution_id)) and record.stage is Stage.CANCELLED,
    )
    # A worker that had already taken the job reports it generating, then stored: too late.
    late = {
        "version": "0",
        "id": "late-1",
        "detail-type": IMAGE_GENERATION_PROGRESS,
        "source": "imagegen",
        "account": "123456789012",
        "time": "2026-11-25T12:00:03Z",
        "region": "us-east-1",
        "resources": [],
        "detail": ImageGenerationProgressDetail(
            execution_id=execution_id,
            owner=workflow.owner,
            stage=Stage.GENERATING,
            backend="gpu",
            at=datetime.now(UTC),
        ).model_dump(mode="json"),
    }
    answer = workflow.stack.invoke("RecordJobProgressFunction", late)
    assert answer["applied"] is False

    record = record_of(workflow, execution_id)
    assert record is not None and record.stage is Stage.CANCELLED
    _, status = workflow.status(execution_id)
    assert (status["status"], status["stage"], status["queue_position"]) == (
        "ABORTED",
        "cancelled",
        None,
    )
