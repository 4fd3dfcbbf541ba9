"""ReportJobEndingFunction writes every ending into the jobs table (SUCCEEDED too), with its cost,
before it publishes anything; a success publishes nothing, and progress after an ending is lost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from imagegen_common.job_records import JobsTable, apply_progress, create_job, jobs_table, read_job
from imagegen_common.models import (
    Backend,
    ExecutionStatus,
    GenerateRequest,
    ImageGenerationProgressDetail,
    Job,
    Stage,
)
from tests.conftest import import_function
from tests.jobs_table import create_jobs_table
from tests.unit.test_job_endings import EXECUTION_ARN, RecordedStepFunctions, put_events_succeeded

OWNER = "apikey:abc"
GENERATED = {
    "schema_version": "1.1",
    "execution_id": "job-1",
    "owner": OWNER,
    "backend": "bedrock",
    "model_id": "stability.stable-image-core-v1:1",
    "parameters": {"prompt": "a lighthouse", "num_images": 1},
    "images": [],
    "completed_at": "2026-11-25T12:00:09Z",
    "cost": {"usd": 0.04, "basis": "Bedrock price per image"},
}


@pytest.fixture
def ending(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, JobsTable]]:
    with mock_aws():
        boto3.client("events").create_event_bus(Name="imagegen-bus")
        monkeypatch.setenv("EVENT_BUS_NAME", "imagegen-bus")
        monkeypatch.setenv("JOBS_TABLE_NAME", create_jobs_table())
        module = import_function("report_job_ending")
        table = jobs_table("imagegen-jobs", client=boto3.client("dynamodb"))
        job = Job(
            job_id="job-1",
            owner=OWNER,
            submitted_at=datetime(2026, 11, 25, 12, tzinfo=UTC),
            request=GenerateRequest(prompt="a lighthouse"),
        )
        create_job(table, job, Backend.BEDROCK, None)
        yield module, table


def status_change(module: Any, status: str, output: str | None = None) -> Any:
    return module.ExecutionStatusChange(
        executionArn=EXECUTION_ARN,
        stateMachineArn="arn:aws:states:us-east-1:123456789012:stateMachine:imagegen",
        name="job-1",
        status=status,
        stopDate=1795611609000,
        output=output,
    )


def test_a_success_is_recorded_with_the_cost_of_its_output(ending: tuple[Any, JobsTable]) -> None:
    module, table = ending
    sfn = RecordedStepFunctions([])

    assert module.record_ending(
        sfn, table, status_change(module, "SUCCEEDED", json.dumps(GENERATED))
    )
    record = read_job(table, "job-1", OWNER)
    assert record is not None
    assert (record.status, record.stage) == (ExecutionStatus.SUCCEEDED, Stage.SUCCEEDED)
    assert record.cost is not None and record.cost.usd == 0.04
    assert record.updated_at == datetime.fromtimestamp(1795611609, tz=UTC)


def test_without_output_in_the_event_the_cost_is_read_from_the_execution(
    ending: tuple[Any, JobsTable],
) -> None:
    module, table = ending
    sfn = RecordedStepFunctions([], output=json.dumps(GENERATED))

    assert module.record_ending(sfn, table, status_change(module, "SUCCEEDED"))
    record = read_job(table, "job-1", OWNER)
    assert record is not None and record.cost is not None and record.cost.usd == 0.04


@pytest.mark.parametrize(
    ("status", "stage", "usd"),
    [
        ("FAILED", Stage.FAILED, 0.0),
        ("TIMED_OUT", Stage.TIMED_OUT, 0.0),
        ("ABORTED", Stage.CANCELLED, None),
    ],
)
def test_every_other_ending_is_recorded_with_its_stage(
    ending: tuple[Any, JobsTable], status: str, stage: Stage, usd: float | None
) -> None:
    module, table = ending
    assert module.record_ending(RecordedStepFunctions([]), table, status_change(module, status))
    record = read_job(table, "job-1", OWNER)
    assert record is not None and record.stage is stage
    assert (record.cost.usd if record.cost else None) == usd


def test_the_handler_records_a_success_and_publishes_nothing(
    ending: tuple[Any, JobsTable], lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, table = ending
    monkeypatch.setattr(module, "sfn", RecordedStepFunctions([put_events_succeeded()]))
    puts: list[Any] = []
    monkeypatch.setattr(module.events, "put_events", lambda **kwargs: puts.append(kwargs))
    event = {
        "version": "0",
        "id": "1",
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": "123456789012",
        "time": "2026-11-25T12:00:09Z",
        "region": "us-east-1",
        "resources": [EXECUTION_ARN],
        "detail": {
            "executionArn": EXECUTION_ARN,
            "stateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:imagegen",
            "name": "job-1",
            "status": "SUCCEEDED",
            "stopDate": 1795611609000,
            "output": json.dumps(GENERATED),
        },
    }

    assert module.lambda_handler(event, lambda_context) is None
    assert puts == []
    record = read_job(table, "job-1", OWNER)
    assert record is not None and record.status is ExecutionStatus.SUCCEEDED
    # A progress event that arrives after the ending changes nothing.
    late = ImageGenerationProgressDetail(
        execution_id="job-1",
        owner=OWNER,
        stage=Stage.SIGNING,
        at=datetime(2026, 11, 25, 13, tzinfo=UTC),
    )
    assert not apply_progress(table, late)
    assert module.record_ending(module.sfn, table, status_change(module, "ABORTED")) is False
    record = read_job(table, "job-1", OWNER)
    assert record is not None and record.stage is Stage.SUCCEEDED
