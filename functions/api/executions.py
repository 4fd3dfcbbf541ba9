"""Jobs as Step Functions executions: start, read and cancel them on behalf of their owner.

A job's id is its execution name. The execution's input carries the owner, so a caller can read
or cancel only its own jobs; for anyone else the job does not exist (404, not 403, so ids of
other callers' jobs cannot be probed).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from http import HTTPStatus
from typing import Any, Final, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from imagegen_common.failures import NOTHING_SPENT
from imagegen_common.job_records import JobsTable, read_job
from imagegen_common.models import (
    ErrorCode,
    ErrorInfo,
    ExecutionStatus,
    ImageGeneratedDetail,
    ImageView,
    Job,
    JobStatus,
    Stage,
)
from imagegen_common.presign import presign_get
from job_progress import with_record
from refusals import ApiRefusal

_EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")

STAGE_BY_STATE: dict[str, str] = {
    "Validate Prompt": "validating",
    "Which Backend?": "validating",
    "Generate with Bedrock": "generating",
    "Generate One Image": "generating",
    "Record Image Failure": "generating",
    "Fall Back to GPU?": "generating",
    "Use GPU Backend": "generating",
    "Report Queued on GPU": "queued",
    "Generate on GPU": "generating",
    "Create Pre-signed URLs": "signing",
    "Emit Image Generated": "publishing",
    "Describe Failure": "failing",
    "Emit Image Generation Failed": "failing",
    "Generation Failed": "failing",
    "Failure Not Described": "failing",
}
"""What ``GET /generate/{id}`` reports as ``stage`` for each state of the workflow, for a job the
jobs table has no record of (started outside the API, or before the table existed)."""


CANCELLING: Final = "CANCELLING"
"""DELETE's answer while the stop is being applied: Step Functions still reads RUNNING."""


class JobCancellation(BaseModel):
    """Body of ``DELETE /generate/{execution_id}``'s 202."""

    execution_id: str
    status: ExecutionStatus | Literal["CANCELLING"] = Field(
        description="The job's status after the stop: ABORTED once it is applied; CANCELLING "
        "(DELETE's answer while the stop is being applied) while it still reads RUNNING; "
        "or how the job ended if it ended on its own first."
    )


class JobNotFoundError(ApiRefusal):
    """No job with this id belongs to the caller (404, for other callers' jobs too)."""

    code = ErrorCode.NOT_FOUND
    http_status = HTTPStatus.NOT_FOUND

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no job {execution_id}")
        self.execution_id = execution_id


class IdempotencyConflictError(ApiRefusal):
    """An Idempotency-Key was reused with a different request (409)."""

    code = ErrorCode.CONFLICT
    http_status = HTTPStatus.CONFLICT


class JobNotRunningError(ApiRefusal):
    """The job has already ended, so it cannot be cancelled (409)."""

    code = ErrorCode.CONFLICT
    http_status = HTTPStatus.CONFLICT

    def __init__(self, status: ExecutionStatus) -> None:
        super().__init__(
            f"the job has already ended with status {status.value}; there is nothing to cancel"
        )
        self.status = status


def new_job_id(owner: str, idempotency_key: str | None) -> str:
    """The execution name: derived from owner and key when retries must find the same job."""
    if idempotency_key:
        digest = hashlib.sha256(f"{owner}\n{idempotency_key}".encode()).hexdigest()
        return f"idem-{digest[:48]}"
    return uuid.uuid4().hex


def execution_arn(state_machine_arn: str, execution_name: str) -> str:
    prefix = state_machine_arn.replace(":stateMachine:", ":execution:", 1)
    return f"{prefix}:{execution_name}"


def start_job(sfn: Any, state_machine_arn: str, job: Job) -> str:
    """Start the workflow for ``job``; a retry with the same id returns the same job.

    Step Functions keeps execution names unique per state machine (for 90 days after an
    execution ends), which makes the name an idempotency key. A reused key with another request
    is a conflict.
    """
    payload = json.dumps({"job": job.model_dump(mode="json")})
    try:
        sfn.start_execution(stateMachineArn=state_machine_arn, name=job.job_id, input=payload)
    except ClientError as error:
        if error.response["Error"]["Code"] != "ExecutionAlreadyExists":
            raise
        existing = _job_of(_describe(sfn, state_machine_arn, job.job_id))
        if existing.owner != job.owner or existing.request != job.request:
            raise IdempotencyConflictError(
                "this Idempotency-Key was already used with a different request"
            ) from error
    return job.job_id


def job_status(
    sfn: Any,
    s3_client: Any,
    state_machine_arn: str,
    execution_id: str,
    owner: str,
    ttl_seconds: int,
    jobs: JobsTable | None = None,
) -> JobStatus:
    """The job's status; on success with freshly signed URLs, on failure with code and message.

    Step Functions says the status and the result; with ``jobs``, the job's record adds where a
    running job is (stage, queue position, progress, the images so far) and its timestamps.
    """
    execution = _owned_execution(sfn, state_machine_arn, execution_id, owner)
    status = ExecutionStatus(execution["status"])
    result = JobStatus(execution_id=execution_id, status=status)
    record = read_job(jobs, execution_id, owner) if jobs is not None else None
    if status is ExecutionStatus.RUNNING:
        if record is None:
            result.stage = _current_stage(sfn, execution["executionArn"])
    elif status is ExecutionStatus.SUCCEEDED:
        detail = ImageGeneratedDetail.model_validate_json(execution.get("output") or "{}")
        for image in detail.images:
            bucket, key = image.s3_uri.removeprefix("s3://").split("/", 1)
            url, expires_at = presign_get(s3_client, bucket, key, ttl_seconds)
            result.images.append(
                ImageView(
                    url=url,
                    expires_at=expires_at,
                    width=image.width,
                    height=image.height,
                    seed=image.seed,
                    content_type=image.content_type,
                )
            )
        result.failed_images = detail.failed_images
        result.cost = detail.cost
        result.parameters = detail.parameters
    elif status is ExecutionStatus.FAILED:
        result.error = _failure_of(execution)
        result.cost = NOTHING_SPENT  # a job fails only when none of its images was made
    elif status is ExecutionStatus.TIMED_OUT:
        result.error = ErrorInfo(code=ErrorCode.TIMEOUT, message="the workflow timed out")
        result.cost = NOTHING_SPENT
    if jobs is None:
        return result
    return with_record(result, record, jobs, s3_client, ttl_seconds)


def execution_status(sfn: Any, state_machine_arn: str, execution_id: str) -> str:
    """Step Functions' status of the job, as it reads it (one DescribeExecution, no ownership
    check: for the caller that has just started or found the job)."""
    return str(_describe(sfn, state_machine_arn, execution_id)["status"])


def cancel_job(sfn: Any, state_machine_arn: str, execution_id: str, owner: str) -> JobCancellation:
    """Stop a running job; the status it reads afterwards, CANCELLING while the stop is applied.

    Nothing is announced here: the "Image Generation Cancelled" event comes from the execution's
    own status change, once, however many times DELETE is called.
    """
    execution = _owned_execution(sfn, state_machine_arn, execution_id, owner)
    status = ExecutionStatus(execution["status"])
    if status is not ExecutionStatus.RUNNING:
        raise JobNotRunningError(status)
    try:
        sfn.stop_execution(
            executionArn=execution["executionArn"],
            error="Cancelled",
            cause="cancelled by its owner through DELETE /generate/{execution_id}",
        )
    except ClientError as error:
        if error.response["Error"]["Code"] == "ExecutionDoesNotExist":
            raise JobNotFoundError(execution_id) from error
        raise
    # AWS applies a stop at once; moto (and any stop racing a state's end) may still read RUNNING.
    now = ExecutionStatus(_describe(sfn, state_machine_arn, execution_id)["status"])
    return JobCancellation(
        execution_id=execution_id,
        status=CANCELLING if now is ExecutionStatus.RUNNING else now,
    )


def _describe(sfn: Any, state_machine_arn: str, execution_id: str) -> dict[str, Any]:
    if not _EXECUTION_NAME.match(execution_id):
        raise JobNotFoundError(execution_id)
    try:
        described: dict[str, Any] = sfn.describe_execution(
            executionArn=execution_arn(state_machine_arn, execution_id)
        )
    except ClientError as error:
        if error.response["Error"]["Code"] in {"ExecutionDoesNotExist", "InvalidArn"}:
            raise JobNotFoundError(execution_id) from error
        raise
    return described


def _job_of(execution: dict[str, Any]) -> Job:
    return Job.model_validate(json.loads(execution.get("input") or "{}")["job"])


def _owned_execution(
    sfn: Any, state_machine_arn: str, execution_id: str, owner: str
) -> dict[str, Any]:
    execution = _describe(sfn, state_machine_arn, execution_id)
    try:
        job_owner = _job_of(execution).owner
    except (KeyError, ValueError):
        job_owner = None  # started outside the API: nobody's job
    if job_owner != owner:
        raise JobNotFoundError(execution_id)
    return execution


def _current_stage(sfn: Any, arn: str) -> Stage | None:
    history = sfn.get_execution_history(executionArn=arn, reverseOrder=True, maxResults=50)
    for event in history.get("events", []):
        if event["type"].endswith("StateEntered"):
            stage = STAGE_BY_STATE.get(event["stateEnteredEventDetails"]["name"])
            return Stage(stage) if stage is not None else None
    return Stage.QUEUED  # started, no state entered yet


def _failure_of(execution: dict[str, Any]) -> ErrorInfo:
    code = execution.get("error") or ""
    message = execution.get("cause") or code or "the workflow failed"
    if code in ErrorCode.__members__:
        return ErrorInfo(code=ErrorCode(code), message=message)
    return ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=f"{code}: {message}")
