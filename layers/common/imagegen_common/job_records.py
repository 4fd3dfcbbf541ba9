"""The jobs table (JobsTable): one item per job, the one module that knows its layout.

Step Functions stays the truth for a job's status and result; this table adds what Step Functions
cannot answer cheaply: where a running job is (stage, progress, the images made so far, its place
in the GPU queue), the caller's own jobs newest first, and the per-request webhook configuration.

Writers, each through a function here:

- the API creates the item at ``POST /generate`` (:func:`create_job`): RUNNING, stage queued;
- RecordJobProgressFunction applies every "Image Generation Progress" event
  (:func:`apply_progress`), conditionally: only while the job is RUNNING and only when the event is
  newer than what the item holds, so a late or repeated event never moves a job back and never
  resurrects one that has ended. An image's outcome is a fact, not a position: it is stored under
  its own attribute (``image_<index>``) whatever the order, so concurrent Map iterations never
  overwrite each other;
- ReportJobEndingFunction writes the terminal status (:func:`apply_ending`), which wins over any
  progress that arrives later.

Layout (low-level DynamoDB types; nested values are JSON strings, so no Decimal anywhere):

=================  ====  =========================================================================
attribute          type  what
=================  ====  =========================================================================
job_id             S     the execution name (partition key)
owner              S     caller identity; key of GSI ByOwner
submitted_at       S     UTC, fixed-width ISO 8601 (sorts as text); sort key of GSI ByOwner
status             S     ExecutionStatus
stage              S     Stage
updated_at         S     the ``at`` of the last change applied
started_at         S     when the stage first became generating
backend, model_id  S     when known
prompt             S     the request's prompt
num_images         N     the images asked for
progress           S     JSON of the last Progress reported
image_<index>      S     JSON of that image's ImageOutcome
cost               S     JSON of the job's Cost, once ended
webhook            S     JSON of the request's WebhookRequest
webhook_disabled   BOOL  set by the delivery function (e.g. on 410 Gone), with _reason S
gpu_queue          S     "gpu" while queued on the GPU backend: key of the sparse GSI GpuQueue
gpu_queued_at      S     when it joined the GPU queue; sort key of GpuQueue
expires_at         N     epoch seconds; the table's TTL attribute
=================  ====  =========================================================================
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from imagegen_common.models import (
    TERMINAL_STAGE_BY_STATUS,
    Backend,
    Cost,
    ExecutionStatus,
    ImageGenerationProgressDetail,
    ImageOutcome,
    Job,
    JobPage,
    JobSummary,
    Parameters,
    Progress,
    Stage,
    WebhookRequest,
)

logger = logging.getLogger(__name__)

BY_OWNER_INDEX: Final = "ByOwner"
GPU_QUEUE_INDEX: Final = "GpuQueue"
GPU_QUEUE_KEY: Final = "gpu"
"""The one partition of GSI GpuQueue: every job waiting for a GPU."""
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
_IMAGE_PREFIX: Final = "image_"
_MAX_QUERY_ROUNDS: Final = 10
"""A filtered list reads at most this many DynamoDB pages per request, then hands back a token."""
_CONDITION_FAILED: Final = "ConditionalCheckFailedException"


class InvalidNextTokenError(ValueError):
    """A ``next_token`` this service did not hand to this caller (the API answers 422)."""


@dataclass(frozen=True)
class JobsTable:
    """Where the jobs live: a DynamoDB client (built once per cold start) and the table name."""

    client: Any
    name: str
    retention_days: int = 30


class JobRecord(BaseModel):
    """A job's item, read back."""

    job_id: str
    owner: str
    status: ExecutionStatus
    stage: Stage
    backend: Backend | None = None
    model_id: str | None = None
    prompt: str
    num_images: int
    submitted_at: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    progress: Progress | None = None
    images: list[ImageOutcome] = Field(default_factory=list, description="By index.")
    cost: Cost | None = None
    parameters: Parameters | None = None
    webhook: WebhookRequest | None = None
    webhook_disabled: bool = False
    gpu_queued_at: str | None = None

    def current_progress(self) -> Progress | None:
        """The progress to report: in images, the outcomes stored so far (each Map iteration
        reports its own image, none knows how many others have finished); in steps, as sent."""
        if self.progress is None or self.progress.unit != "images":
            return self.progress
        steps = max(self.progress.steps, 1)
        done = min(len(self.images), steps)
        return self.progress.model_copy(
            update={"step": done, "percent": round(100 * done / steps, 1)}
        )

    def summary(self) -> JobSummary:
        return JobSummary(
            execution_id=self.job_id,
            status=self.status,
            stage=self.stage,
            backend=self.backend,
            prompt=self.prompt,
            num_images=self.num_images,
            submitted_at=self.submitted_at,
            updated_at=self.updated_at,
            cost=self.cost,
        )


# --- Writes ------------------------------------------------------------------------------------


def create_job(
    table: JobsTable,
    job: Job,
    backend: Backend | None = None,
    model_id: str | None = None,
    parameters: Parameters | None = None,
) -> bool:
    """Put the item of a job just accepted: RUNNING, stage queued. False when it exists already
    (a retry with the same Idempotency-Key): the first item stays as it is."""
    submitted = _timestamp(job.submitted_at)
    item: dict[str, Any] = {
        "job_id": _s(job.job_id),
        "owner": _s(job.owner),
        "status": _s(ExecutionStatus.RUNNING),
        "stage": _s(Stage.QUEUED),
        "submitted_at": _s(submitted),
        "updated_at": _s(submitted),
        "prompt": _s(job.request.prompt),
        "num_images": {"N": str(job.request.num_images)},
        "expires_at": _expires_at(table, job.submitted_at),
    }
    if backend is not None:
        item["backend"] = _s(backend)
    if model_id is not None:
        item["model_id"] = _s(model_id)
    if parameters is not None:
        item["parameters"] = _s(parameters.model_dump_json(exclude_none=True))
    if job.request.webhook is not None:
        item["webhook"] = _s(job.request.webhook.model_dump_json())
    # No GPU queue keys yet: a job joins that queue when "Validate Prompt" has sent it there
    # (its "queued" progress event), so jobs refused by validation never count as ahead.
    try:
        table.client.put_item(
            TableName=table.name,
            Item=item,
            ConditionExpression="attribute_not_exists(job_id)",
        )
    except ClientError as error:
        if _condition_failed(error):
            return False
        raise
    return True


def delete_job(table: JobsTable, job_id: str) -> None:
    """Remove the item of a job whose execution could not be started (it never ran)."""
    try:
        table.client.delete_item(
            TableName=table.name,
            Key={"job_id": _s(job_id)},
            ConditionExpression="#status = :running",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":running": _s(ExecutionStatus.RUNNING)},
        )
    except ClientError as error:
        if not _condition_failed(error):
            raise


def apply_progress(table: JobsTable, detail: ImageGenerationProgressDetail) -> bool:
    """Apply a progress event to its job. True when the job moved on; False when the event was
    older than what the item holds, or the job has ended or is unknown (its image, if any, is
    still stored while the job runs)."""
    at = _timestamp(detail.at)
    names = {"#status": "status", "#stage": "stage", "#updated_at": "updated_at", "#owner": "owner"}
    values: dict[str, Any] = {
        ":running": _s(ExecutionStatus.RUNNING),
        ":owner": _s(detail.owner),
        ":at": _s(at),
        ":stage": _s(detail.stage),
    }
    sets = ["#stage = :stage", "#updated_at = :at"]
    removes: list[str] = []
    if detail.backend is not None:
        sets.append("backend = :backend")
        values[":backend"] = _s(detail.backend)
    if detail.progress is not None:
        sets.append("progress = :progress")
        values[":progress"] = _s(detail.progress.model_dump_json())
    if detail.stage is Stage.GENERATING:
        sets.append("started_at = if_not_exists(started_at, :at)")
    if detail.image is not None:
        names["#image"] = _image_attribute(detail.image.index)
        sets.append("#image = :image")
        values[":image"] = _s(detail.image.model_dump_json())
    if detail.stage is Stage.QUEUED and detail.backend is Backend.GPU:
        sets.append("gpu_queue = :gpu")
        sets.append("gpu_queued_at = if_not_exists(gpu_queued_at, :at)")
        values[":gpu"] = _s(GPU_QUEUE_KEY)
    else:
        removes += ["gpu_queue", "gpu_queued_at"]
    expression = "SET " + ", ".join(sets)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    try:
        table.client.update_item(
            TableName=table.name,
            Key={"job_id": _s(detail.execution_id)},
            UpdateExpression=expression,
            ConditionExpression="attribute_exists(job_id) AND #status = :running "
            "AND #owner = :owner AND #updated_at < :at",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
    except ClientError as error:
        if not _condition_failed(error):
            raise
        if detail.image is not None:
            _store_image(table, detail.execution_id, detail.owner, detail.image)
        return False
    return True


def _store_image(table: JobsTable, job_id: str, owner: str, image: ImageOutcome) -> None:
    """Store one image's outcome while the job runs, whatever order the events came in."""
    try:
        table.client.update_item(
            TableName=table.name,
            Key={"job_id": _s(job_id)},
            UpdateExpression="SET #image = :image",
            ConditionExpression="attribute_exists(job_id) AND #status = :running "
            "AND #owner = :owner",
            ExpressionAttributeNames={
                "#image": _image_attribute(image.index),
                "#status": "status",
                "#owner": "owner",
            },
            ExpressionAttributeValues={
                ":image": _s(image.model_dump_json()),
                ":running": _s(ExecutionStatus.RUNNING),
                ":owner": _s(owner),
            },
        )
    except ClientError as error:
        if not _condition_failed(error):
            raise


def apply_ending(
    table: JobsTable,
    job_id: str,
    status: ExecutionStatus,
    cost: Cost | None = None,
    at: datetime | None = None,
) -> bool:
    """Write a job's terminal status and stage (and cost). Only a RUNNING job ends: a repeated
    ending, or one for a job this table never had, changes nothing and gives False."""
    if status is ExecutionStatus.RUNNING:
        raise ValueError("apply_ending needs a terminal status")
    ended = at or datetime.now(UTC)
    values: dict[str, Any] = {
        ":running": _s(ExecutionStatus.RUNNING),
        ":status": _s(status),
        ":stage": _s(TERMINAL_STAGE_BY_STATUS[status]),
        ":at": _s(_timestamp(ended)),
        ":expires_at": _expires_at(table, ended),
    }
    sets = ["#status = :status", "#stage = :stage", "updated_at = :at", "expires_at = :expires_at"]
    if cost is not None:
        sets.append("cost = :cost")
        values[":cost"] = _s(cost.model_dump_json())
    try:
        table.client.update_item(
            TableName=table.name,
            Key={"job_id": _s(job_id)},
            UpdateExpression="SET " + ", ".join(sets) + " REMOVE gpu_queue, gpu_queued_at",
            ConditionExpression="attribute_exists(job_id) AND #status = :running",
            ExpressionAttributeNames={"#status": "status", "#stage": "stage"},
            ExpressionAttributeValues=values,
        )
    except ClientError as error:
        if _condition_failed(error):
            return False
        raise
    return True


def disable_webhook(table: JobsTable, job_id: str, reason: str) -> None:
    """Stop deliveries to this job's webhook (e.g. its receiver answered 410 Gone)."""
    try:
        table.client.update_item(
            TableName=table.name,
            Key={"job_id": _s(job_id)},
            UpdateExpression="SET webhook_disabled = :true, webhook_disabled_reason = :reason",
            ConditionExpression="attribute_exists(job_id)",
            ExpressionAttributeValues={":true": {"BOOL": True}, ":reason": _s(reason)},
        )
    except ClientError as error:
        if not _condition_failed(error):
            raise


# --- Reads -------------------------------------------------------------------------------------


def read_job(table: JobsTable, job_id: str, owner: str) -> JobRecord | None:
    """The job's item, if it is ``owner``'s (None for anyone else's, as for an unknown id)."""
    item = table.client.get_item(
        TableName=table.name, Key={"job_id": _s(job_id)}, ConsistentRead=True
    ).get("Item")
    if item is None or item.get("owner", {}).get("S") != owner:
        return None
    return _record_of(item)


def webhook_of(table: JobsTable, job_id: str) -> tuple[WebhookRequest | None, bool]:
    """(the job's webhook, whether deliveries to it are disabled); (None, False) when the job has
    none or is unknown."""
    item = table.client.get_item(
        TableName=table.name,
        Key={"job_id": _s(job_id)},
        ProjectionExpression="webhook, webhook_disabled",
        ConsistentRead=True,
    ).get("Item")
    if not item:
        return None, False
    webhook = item.get("webhook", {}).get("S")
    disabled = bool(item.get("webhook_disabled", {}).get("BOOL", False))
    return (WebhookRequest.model_validate_json(webhook) if webhook else None), disabled


def queue_position(table: JobsTable, record: JobRecord) -> int | None:
    """Jobs ahead of this one in the GPU queue; None when it is not waiting there."""
    if record.gpu_queued_at is None or record.status is not ExecutionStatus.RUNNING:
        return None
    ahead = 0
    request: dict[str, Any] = {
        "TableName": table.name,
        "IndexName": GPU_QUEUE_INDEX,
        "KeyConditionExpression": "gpu_queue = :gpu AND gpu_queued_at < :mine",
        "ExpressionAttributeValues": {":gpu": _s(GPU_QUEUE_KEY), ":mine": _s(record.gpu_queued_at)},
        "Select": "COUNT",
    }
    while True:
        answer = table.client.query(**request)
        ahead += int(answer.get("Count", 0))
        if "LastEvaluatedKey" not in answer:
            return ahead
        request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def list_jobs(
    table: JobsTable,
    owner: str,
    status: ExecutionStatus | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    next_token: str | None = None,
) -> JobPage:
    """A page of ``owner``'s jobs, newest first, optionally only those with ``status``.

    A page may hold fewer than ``limit`` jobs and still have a ``next_token`` (a status filter
    reads at most a few DynamoDB pages per call); the last page has none.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE}")
    start_key = decode_next_token(next_token, owner) if next_token else None
    names = {"#owner": "owner"}
    values: dict[str, Any] = {":owner": _s(owner)}
    request: dict[str, Any] = {
        "TableName": table.name,
        "IndexName": BY_OWNER_INDEX,
        "KeyConditionExpression": "#owner = :owner",
        "ScanIndexForward": False,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }
    if status is not None:
        names["#status"] = "status"
        values[":status"] = _s(status)
        request["FilterExpression"] = "#status = :status"
    jobs: list[JobSummary] = []
    for _ in range(_MAX_QUERY_ROUNDS):
        # Limit counts items read before the filter: asking for what is left never overshoots, so
        # the last key read is exactly where the next page starts.
        request["Limit"] = limit - len(jobs)
        if start_key is not None:
            request["ExclusiveStartKey"] = start_key
        answer = table.client.query(**request)
        jobs += [_record_of(item).summary() for item in answer.get("Items", [])]
        start_key = answer.get("LastEvaluatedKey")
        if start_key is None or len(jobs) >= limit:
            break
    return JobPage(jobs=jobs, next_token=encode_next_token(start_key) if start_key else None)


def encode_next_token(key: dict[str, Any]) -> str:
    plain = {name: value["S"] for name, value in sorted(key.items())}
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode()


def decode_next_token(token: str, owner: str) -> dict[str, Any]:
    """The ExclusiveStartKey a token stands for; InvalidNextTokenError for anything this service
    did not hand to ``owner``."""
    try:
        plain = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error) as error:
        raise InvalidNextTokenError("next_token is not a token this API handed out") from error
    expected = {"job_id", "owner", "submitted_at"}
    if (
        not isinstance(plain, dict)
        or set(plain) != expected
        or not all(isinstance(value, str) for value in plain.values())
        or plain["owner"] != owner
    ):
        raise InvalidNextTokenError("next_token is not a token this API handed out to you")
    return {name: _s(value) for name, value in plain.items()}


# --- Layout ------------------------------------------------------------------------------------


def _s(value: str) -> dict[str, str]:
    return {"S": str(value)}


def _timestamp(moment: datetime) -> str:
    """Fixed-width UTC text, so that text order is time order (keys and conditions compare it)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _expires_at(table: JobsTable, moment: datetime) -> dict[str, str]:
    return {"N": str(int((moment + timedelta(days=table.retention_days)).timestamp()))}


def _image_attribute(index: int) -> str:
    return f"{_IMAGE_PREFIX}{index}"


def _condition_failed(error: ClientError) -> bool:
    return bool(error.response.get("Error", {}).get("Code") == _CONDITION_FAILED)


def _record_of(item: dict[str, Any]) -> JobRecord:
    def text(name: str) -> str | None:
        value = item.get(name)
        return str(value["S"]) if value and "S" in value else None

    images = sorted(
        (
            ImageOutcome.model_validate_json(value["S"])
            for name, value in item.items()
            if name.startswith(_IMAGE_PREFIX) and "S" in value
        ),
        key=lambda image: image.index,
    )
    progress, cost, webhook = text("progress"), text("cost"), text("webhook")
    parameters = text("parameters")
    return JobRecord(
        job_id=item["job_id"]["S"],
        owner=item["owner"]["S"],
        status=ExecutionStatus(item["status"]["S"]),
        stage=Stage(item["stage"]["S"]),
        backend=text("backend"),
        model_id=text("model_id"),
        prompt=text("prompt") or "",
        num_images=int(item.get("num_images", {}).get("N", "1")),
        submitted_at=item["submitted_at"]["S"],
        updated_at=text("updated_at"),
        started_at=text("started_at"),
        progress=Progress.model_validate_json(progress) if progress else None,
        images=images,
        cost=Cost.model_validate_json(cost) if cost else None,
        parameters=Parameters.model_validate_json(parameters) if parameters else None,
        webhook=WebhookRequest.model_validate_json(webhook) if webhook else None,
        webhook_disabled=bool(item.get("webhook_disabled", {}).get("BOOL", False)),
        gpu_queued_at=text("gpu_queued_at"),
    )


def jobs_table(name: str, retention_days: int = 30, client: Any | None = None) -> JobsTable:
    """The jobs table through the project's DynamoDB client (or ``client``)."""
    if client is None:
        from imagegen_common.aws import client as aws_client

        client = aws_client("dynamodb")
    return JobsTable(client=client, name=name, retention_days=retention_days)
