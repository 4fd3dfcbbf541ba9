"""The two functions that make sure every job ends with exactly one terminal event:
ReportJobEndingFunction (executions that ended without one of the workflow's events) and
FailLostGpuJobsFunction (GPU jobs whose workers all died)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import import_function, load_event

EXECUTION_ARN = "arn:aws:states:us-east-1:123456789012:execution:imagegen:job-1"
JOB = {
    "job_id": "job-1",
    "owner": "apikey:abc",
    "submitted_at": "2026-11-25T12:00:00Z",
    "request": {"prompt": "a lighthouse", "num_images": 2},
    "backend": "gpu",
}


class RecordedStepFunctions:
    """The Step Functions calls these functions make, answered from a recorded execution."""

    def __init__(self, history: list[dict[str, Any]], **execution: Any) -> None:
        self.history = history
        self.execution = {"executionArn": EXECUTION_ARN, "input": json.dumps({"job": JOB})}
        self.execution.update(execution)
        self.task_failures: list[dict[str, Any]] = []
        self.failure_error: ClientError | None = None

    def get_paginator(self, operation: str) -> Any:
        assert operation == "get_execution_history"
        history = self.history

        class Paginator:
            def paginate(self, **kwargs: Any) -> list[dict[str, Any]]:
                assert kwargs["executionArn"] == EXECUTION_ARN
                return [{"events": list(reversed(history))}]

        return Paginator()

    def describe_execution(self, executionArn: str) -> dict[str, Any]:
        return self.execution

    def send_task_failure(self, **kwargs: Any) -> None:
        if self.failure_error is not None:
            raise self.failure_error
        self.task_failures.append(kwargs)


def change(status: str) -> Any:
    module = import_function("report_job_ending")
    return module.ExecutionStatusChange(
        executionArn=EXECUTION_ARN,
        stateMachineArn="arn:aws:states:us-east-1:123456789012:stateMachine:imagegen",
        name="job-1",
        status=status,
    )


def put_events_succeeded() -> dict[str, Any]:
    return {
        "type": "TaskSucceeded",
        "taskSucceededEventDetails": {"resourceType": "events", "resource": "putEvents"},
    }


@pytest.fixture
def report_job_ending(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("EVENT_BUS_NAME", "imagegen-bus")
    monkeypatch.setenv("JOBS_TABLE_NAME", "imagegen-jobs")
    return import_function("report_job_ending")


@pytest.mark.parametrize("status", ["ABORTED", "FAILED", "TIMED_OUT"])
def test_nothing_is_owed_when_the_workflow_put_its_own_event(
    report_job_ending: Any, status: str
) -> None:
    sfn = RecordedStepFunctions([{"type": "TaskStateEntered"}, put_events_succeeded()])
    assert report_job_ending.unreported_ending(sfn, change(status)) is None


def test_a_success_never_owes_an_event(report_job_ending: Any) -> None:
    sfn = RecordedStepFunctions([])
    assert report_job_ending.unreported_ending(sfn, change("SUCCEEDED")) is None


def test_a_stopped_execution_owes_a_cancelled_event_for_its_owner(report_job_ending: Any) -> None:
    sfn = RecordedStepFunctions([{"type": "TaskStateEntered"}])
    detail_type, detail = report_job_ending.unreported_ending(sfn, change("ABORTED"))
    assert detail_type == "Image Generation Cancelled"
    assert detail.execution_id == "job-1"
    assert detail.owner == "apikey:abc"


def test_a_timed_out_execution_owes_a_timeout_failure(report_job_ending: Any) -> None:
    sfn = RecordedStepFunctions([])
    detail_type, detail = report_job_ending.unreported_ending(sfn, change("TIMED_OUT"))
    assert detail_type == "Image Generation Failed"
    assert detail.error.code == "TIMEOUT"
    assert detail.backend == "gpu"
    assert detail.parameters.num_images == 2


def test_a_failure_whose_event_could_not_be_put_is_reported_with_its_code(
    report_job_ending: Any,
) -> None:
    # "Emit Image Generation Failed" failed: a putEvents task that did not succeed.
    failed_put = {"type": "TaskFailed", "taskFailedEventDetails": {"resourceType": "events"}}
    sfn = RecordedStepFunctions(
        [failed_put], error="INTERNAL_ERROR", cause="The workflow failed and ..."
    )
    detail_type, detail = report_job_ending.unreported_ending(sfn, change("FAILED"))
    assert detail_type == "Image Generation Failed"
    assert detail.error.code == "INTERNAL_ERROR"


def test_an_unreadable_execution_input_still_gives_an_event(report_job_ending: Any) -> None:
    sfn = RecordedStepFunctions([], input="not json")
    _, detail = report_job_ending.unreported_ending(sfn, change("ABORTED"))
    assert detail.owner == "unknown"


@pytest.fixture
def fail_lost_gpu_jobs() -> Any:
    return import_function("fail_lost_gpu_jobs")


def test_a_lost_job_fails_its_task_with_worker_lost(fail_lost_gpu_jobs: Any) -> None:
    sfn = RecordedStepFunctions([])
    body = load_event("fail_lost_gpu_jobs.json")["Records"][0]["body"]

    assert fail_lost_gpu_jobs.fail_lost_job(sfn, body) is True
    [failure] = sfn.task_failures
    assert failure["error"] == "WORKER_LOST"
    assert failure["taskToken"] == json.loads(body)["task_token"]


@pytest.mark.parametrize(
    "body",
    ["not json", "[" * 10_000 + "]" * 10_000, '{"task_token": ' + "9" * 5000 + "}", "[1, 2]", "{}"],
)
def test_a_poison_message_is_not_answered(fail_lost_gpu_jobs: Any, body: str) -> None:
    sfn = RecordedStepFunctions([])
    assert fail_lost_gpu_jobs.fail_lost_job(sfn, body) is False
    assert sfn.task_failures == []


@pytest.mark.parametrize("code", ["TaskTimedOut", "TaskDoesNotExist", "InvalidToken"])
def test_a_task_that_already_ended_needs_nothing_more(fail_lost_gpu_jobs: Any, code: str) -> None:
    sfn = RecordedStepFunctions([])
    sfn.failure_error = ClientError({"Error": {"Code": code}}, "SendTaskFailure")
    body = json.dumps({"task_token": "t"})
    assert fail_lost_gpu_jobs.fail_lost_job(sfn, body) is True


def test_a_step_functions_outage_leaves_the_message_for_a_retry(
    fail_lost_gpu_jobs: Any, lambda_context: Any
) -> None:
    sfn = RecordedStepFunctions([])
    sfn.failure_error = ClientError({"Error": {"Code": "ThrottlingException"}}, "SendTaskFailure")
    fail_lost_gpu_jobs.sfn = sfn
    event = load_event("fail_lost_gpu_jobs.json")

    answer = fail_lost_gpu_jobs.lambda_handler(event, lambda_context)

    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
