"""What the jobs table adds to a job's status: where a running job is, and the caller's job list.

Step Functions stays the truth for a job's status and its final result (``executions``); the
table (``imagegen_common.job_records``) says where a running job is: its stage, its place in the
GPU queue, its progress, its timestamps and the images made so far, signed here like a finished
job's.
"""

from __future__ import annotations

from typing import Any

from imagegen_common.job_records import (
    InvalidNextTokenError,
    JobRecord,
    JobsTable,
    list_jobs,
    queue_position,
)
from imagegen_common.models import (
    TERMINAL_STAGE_BY_STATUS,
    ExecutionStatus,
    FailedImage,
    FieldError,
    ImageView,
    JobPage,
    JobStatus,
)
from imagegen_common.presign import presign_get
from refusals import InvalidRequestError


def with_record(
    status: JobStatus,
    record: JobRecord | None,
    jobs: JobsTable,
    s3_client: Any,
    ttl_seconds: int,
) -> JobStatus:
    """``status`` (read from Step Functions) with what the job's record adds."""
    if status.status is not ExecutionStatus.RUNNING:
        status.stage = TERMINAL_STAGE_BY_STATUS[status.status]
    if record is None:
        return status
    status.backend = status.backend or record.backend
    status.parameters = status.parameters or record.parameters
    status.submitted_at = record.submitted_at
    status.started_at = record.started_at
    status.updated_at = record.updated_at
    if status.status is not ExecutionStatus.RUNNING:
        return status
    status.stage = record.stage
    status.progress = record.current_progress()
    status.queue_position = queue_position(jobs, record)
    for outcome in record.images:
        if outcome.succeeded and outcome.bucket and outcome.s3_key:
            url, expires_at = presign_get(s3_client, outcome.bucket, outcome.s3_key, ttl_seconds)
            status.images.append(
                ImageView(
                    url=url,
                    expires_at=expires_at,
                    width=outcome.width or 0,
                    height=outcome.height or 0,
                    seed=outcome.seed,
                    content_type=outcome.content_type or "image/png",
                )
            )
        elif outcome.error is not None:
            status.failed_images.append(
                FailedImage(index=outcome.index, seed=outcome.seed, error=outcome.error)
            )
    return status


def job_page(
    jobs: JobsTable,
    owner: str,
    status: ExecutionStatus | None,
    limit: int,
    next_token: str | None,
) -> JobPage:
    """A page of the caller's jobs; a token that is not one of theirs is a 422 naming it."""
    try:
        return list_jobs(jobs, owner, status=status, limit=limit, next_token=next_token)
    except InvalidNextTokenError as error:
        field = FieldError(
            field="next_token", in_="query", rule="invalid_token", message=str(error)
        )
        raise InvalidRequestError([field], message=str(error)) from error


class UnsafeWebhookError(InvalidRequestError):
    """``webhook.url`` is refused by the SSRF guard (422 naming it and the rule)."""


def check_webhook(url: str, allow_loopback: bool) -> None:
    """Refuse a webhook URL this service must not POST to (``webhook_target``'s rules)."""
    from imagegen_common.webhook_target import UnsafeWebhookTargetError, check_webhook_target

    try:
        check_webhook_target(url, allow_loopback=allow_loopback)
    except UnsafeWebhookTargetError as error:
        field = FieldError(field="webhook.url", in_="body", rule=error.rule, message=str(error))
        raise UnsafeWebhookError([field], message=f"webhook.url: {error}") from error
