"""ReportJobEndingFunction: the one terminal event of an execution the workflow could not announce.

The workflow publishes its own terminal event in its last states ("Emit Image Generated" or
"Emit Image Generation Failed"). An execution can end without reaching them: stopped by
``DELETE /generate/{id}`` or from the console (ABORTED), past the execution's timeout (TIMED_OUT),
or failed where the failure path itself broke (FAILED). Step Functions publishes a
"Step Functions Execution Status Change" event to the default bus for every one of those; this
function receives the FAILED, TIMED_OUT and ABORTED ones and, when the execution's history shows
that none of our events was put, publishes the one that fits: "Image Generation Cancelled" for
ABORTED, "Image Generation Failed" otherwise.

So whatever ends an execution, subscribers get exactly one of "Image Generated",
"Image Generation Failed" or "Image Generation Cancelled" for it.

It also receives SUCCEEDED, and for every ending writes the terminal status and stage (with the
cost, when the execution's output has one) into the jobs table, before publishing anything: a
retry after a failed publish then finds the table written, and a terminal status there wins over
any progress event that arrives later.
"""

import json
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field

from imagegen_common.aws import client
from imagegen_common.failures import NOTHING_SPENT, describe_failure
from imagegen_common.job_records import JobsTable, apply_ending, jobs_table
from imagegen_common.models import (
    IMAGE_GENERATION_CANCELLED,
    IMAGE_GENERATION_FAILED,
    Cost,
    ExecutionStatus,
    ImageGeneratedDetail,
    ImageGenerationCancelledDetail,
    ImageGenerationFailedDetail,
    TaskError,
)
from imagegen_common.settings import EventsSettings, JobsSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = EventsSettings()
jobs_settings = JobsSettings()
sfn = client("stepfunctions")
events = client("events")
table = jobs_table(jobs_settings.jobs_table_name, jobs_settings.job_record_retention_days)

_TIMED_OUT = TaskError(error="States.Timeout", cause="The workflow ran past its timeout.")


class ExecutionStatusChange(BaseModel):
    """``detail`` of Step Functions' "Step Functions Execution Status Change" event."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    execution_arn: str = Field(alias="executionArn")
    state_machine_arn: str = Field(alias="stateMachineArn")
    name: str
    status: ExecutionStatus
    stop_date: int | None = Field(default=None, alias="stopDate", description="Epoch millis.")
    output: str | None = Field(
        default=None, description="The execution's output (JSON), when small enough to include."
    )


class StatusChangeEnvelope(EventBridgeModel):
    detail: ExecutionStatusChange


def result_event_was_put(sfn_client: Any, execution_arn: str) -> bool:
    """Whether the execution put one of our result events (an ``events:putEvents`` task that
    succeeded: only the workflow's Emit states call it)."""
    pages = sfn_client.get_paginator("get_execution_history").paginate(
        executionArn=execution_arn, reverseOrder=True, includeExecutionData=False
    )
    for page in pages:
        for event in page.get("events", []):
            details = event.get("taskSucceededEventDetails")
            if (
                event.get("type") == "TaskSucceeded"
                and details
                and details.get("resourceType") == "events"
                and details.get("resource", "").startswith("putEvents")
            ):
                return True
    return False


def unreported_ending(
    sfn_client: Any, change: ExecutionStatusChange, now: datetime | None = None
) -> tuple[str, ImageGenerationFailedDetail | ImageGenerationCancelledDetail] | None:
    """(detail-type, detail) of the event the execution still owes its subscribers, or None."""
    if change.status in (ExecutionStatus.RUNNING, ExecutionStatus.SUCCEEDED):
        return None  # a success always ends in "Emit Image Generated"
    if result_event_was_put(sfn_client, change.execution_arn):
        return None
    execution = sfn_client.describe_execution(executionArn=change.execution_arn)
    job = _job_of(execution.get("input"))
    ended_at = now or _ended_at(execution, change)
    if change.status is ExecutionStatus.ABORTED:
        return IMAGE_GENERATION_CANCELLED, ImageGenerationCancelledDetail(
            execution_id=change.name,
            owner=str((job or {}).get("owner") or "unknown"),
            cancelled_at=ended_at,
        )
    if change.status is ExecutionStatus.TIMED_OUT:
        error = _TIMED_OUT
    else:
        error = TaskError(
            error=execution.get("error") or "States.Runtime",
            cause=execution.get("cause") or "The workflow failed outside its failure path.",
        )
    return IMAGE_GENERATION_FAILED, describe_failure(change.name, job, error, now=ended_at)


def record_ending(sfn_client: Any, jobs: JobsTable, change: ExecutionStatusChange) -> bool:
    """Write the execution's terminal status into the jobs table; False when the table had no
    running job by that id (started outside the API, or already recorded)."""
    if change.status is ExecutionStatus.RUNNING:
        return False
    ended_at = (
        datetime.fromtimestamp(change.stop_date / 1000, tz=UTC)
        if change.stop_date is not None
        else datetime.now(UTC)
    )
    cost = ending_cost(sfn_client, change)
    return apply_ending(jobs, change.name, change.status, cost=cost, at=ended_at)


def ending_cost(sfn_client: Any, change: ExecutionStatusChange) -> Cost | None:
    """What the job cost, as ``GET /generate/{id}`` reports it: a success's from its output (the
    "Image Generated" detail), nothing spent for a failure or a timeout, unknown when cancelled."""
    if change.status is ExecutionStatus.SUCCEEDED:
        output = change.output
        if output is None:
            output = sfn_client.describe_execution(executionArn=change.execution_arn).get("output")
        try:
            return ImageGeneratedDetail.model_validate_json(output or "{}").cost
        except ValueError:
            logger.warning("the execution's output is not an Image Generated detail")
            return None
    if change.status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT):
        return NOTHING_SPENT  # a job fails only when none of its images was made
    return None


def _job_of(execution_input: str | None) -> dict[str, Any] | None:
    try:
        job = json.loads(execution_input or "{}").get("job")
    except (ValueError, AttributeError):
        return None
    return job if isinstance(job, dict) else None


def _ended_at(execution: dict[str, Any], change: ExecutionStatusChange) -> datetime:
    stop_date = execution.get("stopDate")
    if isinstance(stop_date, datetime):
        return stop_date.astimezone(UTC)
    if change.stop_date is not None:
        return datetime.fromtimestamp(change.stop_date / 1000, tz=UTC)
    return datetime.now(UTC)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any] | None:
    change = parse(event=event, model=StatusChangeEnvelope).detail
    logger.append_keys(execution_id=change.name)
    if not record_ending(sfn, table, change):
        logger.info("no running job in the table to end", status=change.status)
    owed = unreported_ending(sfn, change)
    if owed is None:
        logger.info("the workflow announced its own ending", status=change.status)
        return None
    detail_type, detail = owed
    answer = events.put_events(
        Entries=[
            {
                "EventBusName": settings.event_bus_name,
                "Source": settings.event_source,
                "DetailType": detail_type,
                "Detail": detail.model_dump_json(),
            }
        ]
    )
    if answer.get("FailedEntryCount"):
        # Raising makes Lambda retry the event (then the function's dead-letter queue).
        raise RuntimeError(f"putting {detail_type!r} failed: {answer['Entries']}")
    logger.info("published the ending the workflow could not", detail_type=detail_type)
    metrics.add_metric(name="EndingsReported", unit=MetricUnit.Count, value=1)
    return {"detail_type": detail_type, "detail": detail.model_dump(mode="json")}
